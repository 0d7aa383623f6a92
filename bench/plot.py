"""Draw the cold pipeline's time per phase against the route count, from bench/results.json, into
docs/performance.png. matplotlib is optional (bench/requirements.txt): without it this says so
and exits 0.

    python bench/plot.py [--results bench/results.json] [--out docs/performance.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Drawn stacked, bottom up; the check's and the build's leftovers are folded into their phase.
PHASES = (
    ("load", ("load",)),
    ("validate", ("validate",)),
    ("route", ("route",)),
    ("render (+ snapshot id)", ("render", "id", "build (rest)")),
    ("check: crossplane parse", ("check: crossplane parse",)),
    ("check: our rules", ("check: our rules", "check (rest)")),
    ("write", ("write",)),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.png")
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (pip install -r bench/requirements.txt); no plot")
        return 0
    results = json.loads(args.results.read_text(encoding="utf-8"))
    figures = {item["key"]: item for item in results["figures"]}
    cold = sorted(
        (int(key.split("_")[1]), item)
        for key, item in figures.items()
        if key.startswith("cold_") and not key.startswith("cold_peak") and item["value"] is not None
    )
    if not cold:
        print("plot: no cold pipeline figures in the results; no plot")
        return 0
    routes = [count for count, _ in cold]
    if any("phases" not in item["extra"] for _, item in cold):
        print("plot: the results have no phases; no plot")
        return 0

    fig, (stacked, lines) = plt.subplots(1, 2, figsize=(13, 5.4))
    # Left: each phase's share of the cold run (which phase dominates), the total on top.
    bottom = [0.0] * len(routes)
    positions = range(len(routes))
    for label, parts in PHASES:
        shares = [
            100 * sum(item["extra"]["phases"].get(part, 0.0) for part in parts) / item["value"]
            for _, item in cold
        ]
        stacked.bar(positions, shares, bottom=bottom, label=label, width=0.6)
        for position, (share, base) in enumerate(zip(shares, bottom, strict=True)):
            if share >= 6:
                stacked.text(position, base + share / 2, f"{share:.0f}%", ha="center", va="center")
        bottom = [b + h for b, h in zip(bottom, shares, strict=True)]
    for position, (_, item) in zip(positions, cold, strict=True):
        target = item["target"]
        text = f"{item['value']:.2f} s" + (f" (target {target:g} s)" if target else "")
        stacked.text(position, 101, text, ha="center", va="bottom")
    stacked.set_xticks(list(positions), [f"{count:,}" for count in routes])
    stacked.set_ylim(0, 112)
    stacked.set_xlabel("routes")
    stacked.set_ylabel("share of the cold run (%)")
    stacked.set_title("cold pipeline: where the time goes")
    stacked.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))

    # Right: time against route count, log-log; each series' targets as bars of its colour.
    def series(prefix: str) -> list[tuple[int, float, float | None]]:
        found = [
            (int(key[len(prefix) :]), item["value"], item["target"])
            for key, item in figures.items()
            if key.startswith(prefix) and key[len(prefix) :].isdigit() and item["value"] is not None
        ]
        return sorted(found)

    naive = [(count, item["baseline_value"]) for count, item in cold]
    lines.plot(*zip(*naive, strict=True), "o:", color="grey", label="naive regenerate (floor)")
    for prefix, label, style in (
        ("oneshot_", "one-shot etcd -> checked file", "v-"),
        ("oneshot_single_", "one-shot, apply --registry", "<-"),
        ("cold_", "cold pipeline (profile)", "o-"),
        ("warm_", "warm re-apply, one change", "s-"),
        ("nginx_t_", "nginx -t on the output", "^-"),
        ("live_p95_", "event to live, p95", "D-"),
        ("file_p95_", "event to file, p95", "x-"),
    ):
        found = series(prefix)
        if not found:
            continue
        (line,) = lines.plot([x for x, _, _ in found], [y for _, y, _ in found], style, label=label)
        targets = [(x, target) for x, _, target in found if target]
        if targets:
            lines.scatter(
                [x for x, _ in targets], [t for _, t in targets], marker="_", s=500,
                linewidths=2.5, color=line.get_color(),
            )  # fmt: skip
    lines.set_xscale("log")
    lines.set_yscale("log")
    lines.set_xlabel("routes (services, 10 a branch, for the one-shot and the watch; log scale)")
    lines.set_ylabel("seconds (log scale)")
    lines.set_title("time against route count (bars: targets)")
    lines.grid(True, which="both", alpha=0.3)
    lines.legend(fontsize="small")

    machine = results["machine"]
    fig.suptitle(
        f"devtest-router, {results['started']}: {machine['cores']} cores, {machine['cpu']}, "
        f"Python {machine['python']}",
        fontsize="medium",
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
