"""The wheel built from the repo works on its own: installed into a fresh venv outside the repo,
`devtest-router` finds its schema and templates.

The wheel is built offline (no build isolation; hatchling comes with the test extras) and the
fresh venv reads the runtime dependencies from the environment running the tests through a .pth
line (appended to sys.path after the venv's own site-packages, so the wheel's package wins), so
the test touches no network.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_installed_wheel_renders_the_demo_outside_the_repo(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("devtest_router-*.whl")

    environment = tmp_path / "venv"
    venv.create(environment)  # no pip of its own: the running pip installs into it (--python)
    python = environment / "bin" / "python"
    [own_site] = environment.glob("lib/python*/site-packages")
    (own_site / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
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
        check=True,
        cwd=tmp_path,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    snapshot = work / "snapshot.json"
    snapshot.write_text((REPO / "fixtures" / "demo" / "snapshot.json").read_text())
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import generator.resources as r; print(r.data_dir('schema'))"],
        check=True,
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    assert Path(where).is_relative_to(environment), f"schema found outside the venv: {where}"

    done = subprocess.run(
        [
            str(environment / "bin" / "devtest-router"),
            "check",
            "--json",
            "--allow-loopback",
            str(snapshot),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    routes = json.loads(done.stdout)["routes"]
    assert "master.localhost" in {route["host"] for route in routes}

    rendered = subprocess.run(
        [str(environment / "bin" / "devtest-router"), "render", "--allow-loopback", str(snapshot)],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "map $host $devtest_route" in rendered.stdout
