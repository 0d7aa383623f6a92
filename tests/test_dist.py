"""What a user installs: `make dist` builds a wheel and an sdist that pass `twine check`; the
wheel, installed into a fresh venv, runs from another folder and renders what the project
renders; and the version is written in one place.

The build and the install are the one test that reaches past loopback: `python -m build` fetches
hatchling into its isolated environment and the fresh venv gets devtest-router's dependencies,
from the package index pip is configured with, as a user's install does. It is marked
integration. tests/test_wheel.py is the offline check of an installed wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from generator import __version__

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO / "fixtures" / "hostile-values" / "snapshot.json"  # problems on stderr too
DIST_INFO = f"devtest_router-{__version__}.dist-info"


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
    """`make dist` into dist, with the venv running the tests (not remade: `-o`)."""
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


@pytest.mark.integration
def test_the_wheel_make_dist_builds_installs_and_renders_from_another_folder(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    make_dist(dist)
    [wheel] = dist.glob("devtest_router-*.whl")
    [sdist] = dist.glob("devtest_router-*.tar.gz")
    check_wheel(wheel)
    with tarfile.open(sdist) as archive:
        top = f"devtest_router-{__version__}"
        sdist_names = set(archive.getnames())
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "Makefile"):
        assert f"{top}/{name}" in sdist_names, name

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    installed = run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, 600)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(SNAPSHOT, elsewhere / "snapshot.json")
    router = str(environment / "bin" / "devtest-router")

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
    for found in where.stdout.splitlines():
        assert Path(found).is_relative_to(environment), f"found outside the venv: {found}"

    argv = ["render", "--domain", "dev.test", "snapshot.json"]
    theirs = run([router, *argv], elsewhere)
    ours = run([sys.executable, "-m", "generator", *argv], elsewhere)
    assert ours.returncode == 0 and "map $host $devtest_route" in ours.stdout, ours.stderr
    assert ours.stderr, "the case's problems go to stderr"
    assert (theirs.returncode, theirs.stdout, theirs.stderr) == (
        ours.returncode,
        ours.stdout,
        ours.stderr,
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
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "generator/__init__.py"
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
