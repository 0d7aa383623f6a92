"""The one-shot job end to end, as a user runs it: etcd -> checked file, in real processes.

    python bench/oneshot.py --services 1000 10000 [--runs 5] [--registry etcd3]   # JSON out

For each size, a real etcd (v3 API by default) is loaded with N services, 10 a branch (the
shape of issue 14's comparison with confd: 1,000 services are 100 branches of 10), and a real
nginx runs with the bench's loopback ports. Then, --runs times, with the output file and the
site folder removed before each run (a cold job: nothing to reuse):

- pipe: `devtest-router snapshot --registry URL | devtest-router apply --domain ... --output
  ... --site-dir ... --nginx nginx --test-command 'nginx -t' --reload-command 'nginx -s reload'`
  against the running nginx, so both `nginx -t` runs, the reload and the site pages are in it;
- single: `devtest-router apply --registry URL ...` (one process), when `apply --help` names
  `--registry`.

Timed from just before the first process starts until the last one has exited (the file is on
disk, tested, installed and nginx reloaded), then the file is checked: it exists and routes the
first and the last branch. Peak memory: each process runs under GNU time (`/usr/bin/time -f
%M`, which reports the process's peak resident set, its own children such as `nginx -t`
included); the figure is the largest of the pipeline's processes. Without GNU time, a small
Python wrapper reports getrusage(RUSAGE_CHILDREN) instead (it adds its own start-up to the time).

The variants alternate within each run (pipe, single, pipe, single, ...), so that a busy
moment on the machine does not land on one of them only. Every process is started here, on
127.0.0.1, and stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common
import synthetic
from harness import Etcd, Nginx

from generator.nginx.apply import trust_file

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent / "devtest-router"
GNU_TIME = "/usr/bin/time"
# Without GNU time: run argv[1:] and print the children's peak RSS (KiB) to the file argv[0].
WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def has_single_command() -> bool:
    """Does `devtest-router apply` read the registry itself (`apply --registry URL`)?"""
    done = subprocess.run(
        [str(BIN), "apply", "--help"], capture_output=True, text=True, check=False, env=clean_env()
    )
    # An option line of its own (the epilog names --registry as a flag of other commands).
    return re.search(r"^\s+--registry\b", done.stdout, re.MULTILINE) is not None


def clean_env() -> dict[str, str]:
    """This environment without the tool's own settings (they would change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVTEST_ROUTER_")}
    env.pop("REGISTRY_URL", None)
    return env


def memory_tool() -> str:
    return "GNU time -f %M" if Path(GNU_TIME).exists() else "getrusage(RUSAGE_CHILDREN) wrapper"


def measured(argv: list[str], peak_file: Path) -> list[str]:
    """`argv` run so that its peak resident memory (KiB) ends up in `peak_file`."""
    if Path(GNU_TIME).exists():
        return [GNU_TIME, "-f", "%M", "-o", str(peak_file), *argv]
    return [sys.executable, "-c", WRAPPER, str(peak_file), *argv]


def read_peak(peak_file: Path) -> float | None:
    """MiB from a peak file (GNU time writes a "Command exited with..." line first on failure)."""
    try:
        lines = peak_file.read_text().split()
        return int(lines[-1]) / 1024
    except (OSError, ValueError, IndexError):
        return None


class Stage:
    """etcd loaded with `services` services (10 a branch), and a running nginx."""

    def __init__(self, services: int, api: str, folder: Path) -> None:
        self.services = services
        self.api = api
        self.folder = folder
        self.etcd = Etcd(folder / "etcd")
        self.nginx = Nginx(folder / "nginx", nports=1)
        self.facts: dict[str, Any] = {"services": services, "registry": f"etcd {api}"}

    @property
    def url(self) -> str:
        scheme = "etcd3" if self.api == "v3" else "etcd"
        return f"{scheme}://{LOOPBACK}:{self.etcd.client_port}"

    @property
    def output(self) -> Path:
        return self.nginx.conf_dir / "devtest-router.conf"

    @property
    def site(self) -> Path:
        return self.folder / "site"

    def start(self) -> None:
        self.etcd.start()
        self.nginx.start()
        snapshot = synthetic.wide_registry(self.services)
        names = list(snapshot["deployment"])
        from generator.core.names import hostname

        # A route of the first and of the last branch must be in the checked file.
        self.expected = [hostname(names[0], "web", common.DOMAIN),
                         hostname(names[-1], "grpc", common.DOMAIN)]  # fmt: skip
        writer = synthetic.EtcdWriter(self.etcd.client_port, self.api)
        try:
            keys, self.facts["preload_seconds"] = common.measure(lambda: writer.load(snapshot))
        finally:
            writer.close()
        self.facts.update(
            keys=keys,
            branches=len(names),
            routes=self.services + len(names),  # each branch's services and its entry point
        )

    def stop(self) -> None:
        self.nginx.stop()
        self.etcd.stop()

    def apply_flags(self) -> list[str]:
        return [
            "--domain", common.DOMAIN, "--listen", f"{LOOPBACK}:{self.nginx.port}",
            "--output", str(self.output), "--site-dir", str(self.site), "--nginx", common.NGINX,
            "--test-command", self.nginx.test_command,
            "--reload-command", self.nginx.reload_command,
        ]  # fmt: skip

    def empty(self) -> None:
        """A cold job: no output file (nginx keeps running what it loaded), no trust file (the
        digests of the parts an earlier apply checked) and no site folder."""
        self.output.unlink(missing_ok=True)
        trust_file(self.output).unlink(missing_ok=True)
        shutil.rmtree(self.site, ignore_errors=True)

    def run(self, variant: str, number: int) -> dict[str, Any]:
        """One timed job; its seconds, the peak of its processes (MiB) and the file's size."""
        self.empty()
        log = self.folder / f"{variant}-{number}.log"
        env = clean_env()
        if variant == "pipe":
            commands = [
                [str(BIN), "snapshot", "--registry", self.url],
                [str(BIN), "apply", *self.apply_flags(), "-"],
            ]
        else:
            commands = [[str(BIN), "apply", "--registry", self.url, *self.apply_flags()]]
        peaks = [self.folder / f"peak-{variant}-{number}-{i}" for i in range(len(commands))]
        for peak in peaks:
            peak.unlink(missing_ok=True)
        processes: list[subprocess.Popen[bytes]] = []
        with open(log, "wb") as errors:
            start = time.perf_counter()
            upstream: Any = subprocess.DEVNULL
            for index, argv in enumerate(commands):
                last = index == len(commands) - 1
                process = subprocess.Popen(
                    measured(argv, peaks[index]),
                    stdin=upstream,
                    stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                    stderr=errors,
                    env=env,
                )
                if upstream is not subprocess.DEVNULL:
                    upstream.close()  # the next process holds the pipe's reading end alone
                upstream = process.stdout
                processes.append(process)
            codes = [process.wait() for process in processes]
            seconds = time.perf_counter() - start
        said = log.read_text(errors="replace").strip()
        if any(codes):
            raise RuntimeError(f"{variant} exited {codes}: {' / '.join(said[-2000:].splitlines())}")
        text = self.output.read_text(encoding="utf-8")
        missing = [host for host in self.expected if host not in text]
        if missing:
            raise RuntimeError(f"{variant}: {self.output} lacks {missing}")
        memory = [read_peak(peak) for peak in peaks]
        return {
            "seconds": seconds,
            "peak_mib": max((m for m in memory if m is not None), default=None),
            "process_peaks_mib": memory,
            "bytes": len(text.encode()),
            "site_files": sum(1 for path in self.site.rglob("*") if path.is_file()),
        }


def measure_size(services: int, runs: int, api: str, variants: list[str]) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"devtest-bench-oneshot-{services}-"))
    stage = Stage(services, api, folder)
    result: dict[str, Any] = {"runs": runs, "variants": {name: [] for name in variants}}
    try:
        stage.start()
        failed: dict[str, list[str]] = {name: [] for name in variants}
        for number in range(runs):
            order = variants if number % 2 == 0 else variants[::-1]
            for variant in order:
                # A failed run (e.g. the registry read timing out on a busy machine) is what a
                # user would meet too: it is counted and said, and the next run goes on.
                try:
                    result["variants"][variant].append(stage.run(variant, number))
                except RuntimeError as error:
                    failed[variant].append(str(error))
                    common.say(f"oneshot {services}: run {number + 1}: {error}")
        for variant, found in result["variants"].items():
            result[variant] = summary(found) | {"failed": failed[variant]}
    except Exception as error:  # reported in the results; the other sizes still run
        result["error"] = f"{type(error).__name__}: {error}"
        common.say(f"oneshot {services}: {result['error']}")
    finally:
        result["stage"] = stage.facts
        stage.stop()
        if "error" in result:
            result["folder"] = str(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def summary(found: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [run["seconds"] for run in found]
    peaks = [run["peak_mib"] for run in found if run["peak_mib"] is not None]
    return {
        "median_seconds": common.median(seconds) if seconds else None,
        "min_seconds": min(seconds, default=None),
        "max_seconds": max(seconds, default=None),
        "median_peak_mib": common.median(peaks) if peaks else None,
        "max_peak_mib": max(peaks, default=None),
        "count": len(found),
    }


def run(services: list[int], runs: dict[int, int], api: str = "v3") -> dict[str, Any]:
    variants = ["pipe", "single"] if has_single_command() else ["pipe"]
    found: dict[str, Any] = {"variants": variants, "memory_tool": memory_tool(), "sizes": {}}
    for size in services:
        common.say(f"oneshot: {size:,} services, {runs[size]} runs of {', '.join(variants)}")
        found["sizes"][size] = measure_size(size, runs[size], api, variants)
    return found


def default_runs(size: int) -> int:
    """5 runs up to 10,000 services, 3 at 100,000 (each about 15 s there)."""
    return 5 if size <= 10_000 else 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--runs", type=int, help="runs per size (default 5; 3 at 100,000)")
    parser.add_argument("--registry", choices=("etcd3", "etcd2"), default="etcd3")
    args = parser.parse_args()
    runs = {size: args.runs or default_runs(size) for size in args.services}
    api = "v3" if args.registry == "etcd3" else "v2"
    json.dump(run(args.services, runs, api), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
