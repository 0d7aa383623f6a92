"""What a user installs: `make dist` builds a wheel and an sdist that pass `twine check`; the
wheel, installed into a fresh venv, runs from another folder and does what the project does; the
package imports nothing it does not declare; and the version is written in one place.

Nothing here reaches past loopback. The build runs without isolation
(`make dist BUILD_ARGS=--no-isolation`: the hatchling of the test extras, not one fetched from the
index), and the fresh venv gets the wheel alone (`pip install --no-deps --no-index`) and borrows
the runtime dependencies from the environment running the tests through a .pth line, appended to
sys.path after the venv's own site-packages, so the wheel's package is the one imported. Borrowed
dependencies would hide one missing from pyproject: the fast
test_every_third_party_import_is_a_declared_dependency closes that hole.

The build-and-install test starts no server, so it is not marked integration (the marker means
exactly that): it runs in the quick run too, in about 7 s.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterable
from pathlib import Path

from generator import __version__

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST_INFO = f"devtest_router-{__version__}.dist-info"
# What the installed command runs from another folder, on copies of two fixtures' snapshots:
# the demo (loopback backends) and hostile-values (whose problems go to stderr too).
SNAPSHOTS = {
    "demo.json": REPO / "fixtures" / "demo" / "snapshot.json",
    "hostile.json": REPO / "fixtures" / "hostile-values" / "snapshot.json",
}
COMMANDS = (
    ["check", "--json", "--allow-loopback", "demo.json"],
    ["render", "--allow-loopback", "demo.json"],
    ["render", "--domain", "dev.test", "hostile.json"],
)


def user_env() -> dict[str, str]:
    """The environment without the test run's settings and import path."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DEVTEST_ROUTER_") and key not in ("PYTHONPATH", "REGISTRY_URL")
    }


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def make_dist(dist: Path) -> None:
    """`make dist` into dist, offline, with the venv running the tests (not remade: `-o`)."""
    bin_dir = Path(sys.prefix) / "bin"
    done = run(
        [
            "make",
            "--no-print-directory",
            "-o",
            str(bin_dir / "devtest-router"),
            "dist",
            f"VENV={sys.prefix}",
            f"DIST={dist}",
            "BUILD_ARGS=--no-isolation",
        ],
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # twine check --strict on the wheel and the sdist (rich wraps and colours its lines)
    assert done.stdout.count("PASSED") == 2, done.stdout


def check_wheel(wheel: Path) -> None:
    """py.typed, every schema and template, the license and the version."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"generator/py.typed", f"{DIST_INFO}/licenses/LICENSE"} <= names, sorted(names)
        metadata = archive.read(f"{DIST_INFO}/METADATA").decode()
        license_text = archive.read(f"{DIST_INFO}/licenses/LICENSE").decode()
    for folder in ("schema", "templates"):
        shipped = {
            name.removeprefix(f"generator/_data/{folder}/")
            for name in names
            if name.startswith(f"generator/_data/{folder}/")
        }
        ours = {
            path.relative_to(REPO / folder).as_posix()
            for path in (REPO / folder).rglob("*")
            if path.is_file()
        }
        assert shipped == ours, folder
    assert all(name.startswith(("generator/", f"{DIST_INFO}/")) for name in names), names
    assert license_text == (REPO / "LICENSE").read_text()
    headers = metadata.partition("\n\n")[0].splitlines()
    for header in (
        f"Version: {__version__}",
        "License-Expression: MIT",
        "License-File: LICENSE",
        "Classifier: Typing :: Typed",
    ):
        assert header in headers, metadata


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        top = f"devtest_router-{__version__}"
        names = set(archive.getnames())
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "Makefile"):
        assert f"{top}/{name}" in names, name


def install_offline(wheel: Path, environment: Path) -> Path:
    """A fresh venv holding the wheel alone, the runtime dependencies borrowed from the test
    environment; its python."""
    venv.create(environment)  # no pip of its own: the running pip installs into it (--python)
    python = environment / "bin" / "python"
    [own_site] = environment.glob("lib/python*/site-packages")
    (own_site / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        environment.parent,
        600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_wheel_make_dist_builds_installs_and_runs_from_another_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    make_dist(dist)
    [wheel] = dist.glob("devtest_router-*.whl")
    [sdist] = dist.glob("devtest_router-*.tar.gz")
    check_wheel(wheel)
    check_sdist(sdist)

    environment = tmp_path / "venv"
    python = install_offline(wheel, environment)
    router = str(environment / "bin" / "devtest-router")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, snapshot in SNAPSHOTS.items():
        shutil.copy(snapshot, elsewhere / name)

    version = run([router, "--version"], elsewhere)
    assert (version.returncode, version.stdout) == (0, f"devtest-router {__version__}\n")

    where = run(
        [
            str(python),
            "-c",
            "import generator, generator.resources as r\n"
            "print(generator.__file__, r.data_dir('schema'), r.data_dir('templates'), sep='\\n')",
        ],
        elsewhere,
    )
    assert where.returncode == 0, where.stderr
    assert len(where.stdout.splitlines()) == 3, where.stdout
    for found in where.stdout.splitlines():
        assert Path(found).is_relative_to(environment), f"found outside the venv: {found}"

    results = {}
    for argv in COMMANDS:
        theirs = run([router, *argv], elsewhere)
        ours = run([sys.executable, "-m", "generator", *argv], elsewhere)
        assert (theirs.returncode, theirs.stdout, theirs.stderr) == (
            ours.returncode,
            ours.stdout,
            ours.stderr,
        ), argv
        results[" ".join(argv[:-1])] = ours
    # what the project does, so that equal means right
    checked = results["check --json --allow-loopback"]
    assert checked.returncode == 0, checked.stderr
    assert "master.localhost" in {route["host"] for route in json.loads(checked.stdout)["routes"]}
    for rendered in ("render --allow-loopback", "render --domain dev.test"):
        assert results[rendered].returncode == 0, results[rendered].stderr
        assert "map $host $devtest_route" in results[rendered].stdout, rendered
    assert results["render --domain dev.test"].stderr, "hostile-values' problems go to stderr"


# --------------------------------------------------------------------------
# what the package imports is what it declares


def _normalised(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """The name a PEP 508 requirement starts with."""
    found = re.match(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", requirement)
    assert found, requirement
    return _normalised(found[0])


def third_party_imports(package: Path) -> set[str]:
    """The top-level modules the package's source imports, without the standard library's and
    its own (relative imports are its own)."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - sys.stdlib_module_names - {package.name}


def undeclared(modules: Iterable[str], requirements: Iterable[str]) -> list[str]:
    """The modules no distribution named in requirements provides, each with what does."""
    declared = {_requirement_name(requirement) for requirement in requirements}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(modules):
        names = sorted({_normalised(name) for name in providers.get(module, [])})
        if declared.isdisjoint(names):
            missing.append(f"{module} (provided by {' or '.join(names) or 'nothing installed'})")
    return missing


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """The installed-wheel test borrows the test environment's packages, where a dependency
    pulled in by another one is there too: an import the package relies on must be declared."""
    modules = third_party_imports(REPO / "generator")
    assert {"jinja2", "yaml", "etcd"} <= modules, modules  # the walk sees imports at all
    missing = undeclared(modules, PYPROJECT["project"]["dependencies"])
    assert not missing, f"imported in generator/, not in [project].dependencies: {missing}"


def test_the_offline_build_has_the_backend_the_build_system_requires() -> None:
    """`make dist BUILD_ARGS=--no-isolation` builds with the test environment's packages."""
    assert set(PYPROJECT["build-system"]["requires"]) <= set(
        PYPROJECT["project"]["optional-dependencies"]["test"]
    )


# --------------------------------------------------------------------------
# the version: one place


def _files(top: Path) -> list[Path]:
    """The repository's files, without venvs, caches and build output."""
    found = []
    for folder, subfolders, names in os.walk(top):
        here = Path(folder)
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in ("build", "dist", "__pycache__")
            and not name.endswith(".egg-info")
            and not (here / name / "pyvenv.cfg").exists()
        ]
        found += [here / name for name in names]
    return found


def test_the_version_is_written_in_one_place() -> None:
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "generator/__init__.py"
    assert re.findall(
        r'^__version__ = "([^"]+)"$', (REPO / "generator/__init__.py").read_text(), re.M
    ) == [__version__]

    written = re.compile(rb"(?<![\d.])" + re.escape(__version__.encode()) + rb"(?!\.?\d)")
    places = sorted(
        path.relative_to(REPO).as_posix()
        for path in _files(REPO)
        if written.search(path.read_bytes())
    )
    # the changelog names every version, the current one too
    assert places == ["CHANGELOG.md", "generator/__init__.py"]
