"""The index page at scale in a real browser: time to first paint and a search keystroke.

    python bench/index.py --deployments 10000          # JSON on stdout
    python bench/index.py --deployments 10000 --keep   # and keep the folder (site, nginx logs)

A registry of N deployments as bench/synthetic.py makes them (three services each, `web` and two
others, one instance each: 4 routes a deployment), with the domain `localhost` (Chromium
resolves `*.localhost` to 127.0.0.1 by itself; the other figures use `bench.test`, one character
longer). `devtest-router apply` writes the nginx config and the site folder; a real nginx (the
tests' harness, on a free loopback port) serves the index, and headless Chromium (Debian's
package, driven through the DevTools protocol on a pipe: tests/site_harness.py Browser) loads
it from a fresh profile:

- bytes: index.html as written, and the response body's size as Chromium received it;
- first paint, first contentful paint: `performance.getEntriesByType("paint")`, from the start
  of the navigation;
- DOMContentLoaded (the end of its handlers: every row parsed and the page's script run) and
  the load event's end, from the navigation timing entry;
- the search box: once the page is idle (the page reads each row's text then; a person takes
  longer than that to reach the box), `/` focuses it, then a ticket number is typed key by
  key (each key narrows the rows from all to one), and Escape clears it (all rows back).
  For each key, the time from its keydown to the end of the first frame drawn after it (a
  requestAnimationFrame callback queued at keydown, then a task queued from it, which runs
  once that frame is drawn): the slowest key, the median key, and the Escape. The rows shown
  after each step are counted.

Every figure is the median of `--loads` page loads (default 3), each in a new tab of the same
browser with its cache off (every load transfers the whole page).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common
import synthetic
from harness import Nginx
from site_harness import Browser, Tab

DOMAIN = "localhost"

# Registered at keydown (capture, before the page's own handlers): resolves with the time from
# the keydown to the end of the frame drawn after the key.
ONE_KEY = """
window.__key = new Promise(function (done) {
  document.addEventListener("keydown", function () {
    var start = performance.now();
    requestAnimationFrame(function () {
      setTimeout(function () { done(performance.now() - start); }, 0);
    });
  }, { once: true, capture: true });
});
"""
SHOWN = "document.querySelectorAll('#deployments tbody tr:not([hidden])').length"
# The load event can come before the first paint is recorded (seen on a busy machine): wait
# for the first contentful paint's entry (at most 10 s; the timings then say None if it is not).
PAINTED = """
new Promise(function (done) {
  function has() {
    return performance.getEntriesByName("first-contentful-paint").length > 0;
  }
  if (has()) { done(true); return; }
  new PerformanceObserver(function () { if (has()) { done(true); } })
    .observe({ type: "paint", buffered: true });
  setTimeout(function () { done(false); }, 10000);
})
"""
TIMINGS = """
(function () {
  var paint = {};
  performance.getEntriesByType("paint").forEach(function (e) { paint[e.name] = e.startTime; });
  var nav = performance.getEntriesByType("navigation")[0];
  return {
    first_paint: paint["first-paint"],
    first_contentful_paint: paint["first-contentful-paint"],
    dom_content_loaded: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd,
    response_end: nav.responseEnd,
    body_bytes: nav.decodedBodySize,
    transfer_bytes: nav.transferSize,
    rows: document.querySelectorAll("#deployments tbody tr").length
  };
})()
"""


def apply(nginx: Nginx, site: Path, snapshot: dict[str, Any]) -> float:
    """`devtest-router apply` of `snapshot` into nginx and `site`; its seconds."""
    from generator.cli.main import main

    argv = [
        "apply",
        "--domain", DOMAIN,
        "--listen", f"127.0.0.1:{nginx.port}",
        "--output", str(nginx.conf_dir / "devtest-router.conf"),
        "--site-dir", str(site),
        "--nginx", common.NGINX,
        "--test-command", nginx.test_command,
        "--reload-command", nginx.reload_command,
    ]  # fmt: skip
    err = io.StringIO()
    start = time.perf_counter()
    code = main(
        argv, stdin=io.StringIO(json.dumps(snapshot)), stdout=io.StringIO(), stderr=err, environ={}
    )
    if code != 0:
        raise SystemExit(f"bench/index.py: apply exited {code}: {err.getvalue().strip()}")
    return time.perf_counter() - start


def key_time(tab: Tab, key: str) -> float:
    tab.evaluate(ONE_KEY)
    tab.press(key)
    return float(tab.evaluate("window.__key", wait=True)) / 1000


IDLE = "new Promise(function (done) { requestIdleCallback(done, { timeout: 2000 }); })"


def one_load(tab: Tab, url: str, query: str) -> dict[str, Any]:
    tab.send("Network.setCacheDisabled", {"cacheDisabled": True})
    tab.navigate(url)
    tab.evaluate(PAINTED, wait=True)
    found: dict[str, Any] = tab.evaluate(TIMINGS)
    for name in ("first_paint", "first_contentful_paint", "dom_content_loaded", "load"):
        found[name] = None if found.get(name) is None else found[name] / 1000
    has_box = tab.evaluate("!!document.getElementById('search')")
    found["search"] = has_box
    if not has_box:
        return found
    tab.evaluate(IDLE, wait=True)  # a person takes longer than that to reach the box
    tab.press("/")
    found["focused"] = tab.evaluate("document.activeElement.id") == "search"
    keys = []
    for key in query:
        keys.append(key_time(tab, key))
    found["keys"] = keys
    found["shown_after_query"] = tab.evaluate(SHOWN)
    found["count_text"] = tab.evaluate("document.getElementById('shown').textContent")
    found["escape"] = key_time(tab, "Escape")
    found["shown_after_escape"] = tab.evaluate(SHOWN)
    found["exceptions"] = tab.exceptions()
    return found


def run(deployments: int, loads: int, keep: bool) -> dict[str, Any]:
    snapshot = synthetic.registry(deployments * synthetic.ROUTES_PER_DEPLOYMENT)
    # the ticket number of the middle deployment: one row matches it once typed whole
    middle = sorted(snapshot["deployment"])[deployments // 2]
    query = "ticket-" + middle.split("ticket-")[1].split("-")[0]
    folder = Path(tempfile.mkdtemp(prefix="devtest-bench-index-"))
    nginx = Nginx(folder / "nginx", nports=1)
    result: dict[str, Any] = {"deployments": deployments, "domain": DOMAIN, "query": query}
    try:
        nginx.start()
        result["apply_seconds"] = apply(nginx, folder / "site", snapshot)
        result["index_bytes"] = (folder / "site" / "index.html").stat().st_size
        url = f"http://{DOMAIN}:{nginx.port}/"
        runs = []
        with Browser(folder / "chromium", "--window-size=1280,900") as browser:
            for _ in range(loads):
                runs.append(one_load(browser.tab(), url, query))
        result["loads"] = runs
        result["chromium"] = browser.process.args[0]
    finally:
        nginx.stop()
        if keep:
            common.say(f"bench/index.py: kept {folder}")
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    result["median"] = medians(runs)
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each timing over the loads; of the keys, the slowest and the median key."""

    def median(values: list[Any]) -> float | None:
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None

    found: dict[str, Any] = {
        name: median([run[name] for run in runs])
        for name in ("first_paint", "first_contentful_paint", "dom_content_loaded", "load")
    }
    found["body_bytes"] = runs[0]["body_bytes"]
    found["rows"] = runs[0]["rows"]
    if runs[0].get("search"):
        found["slowest_key"] = median([max(run["keys"]) for run in runs])
        found["median_key"] = median([statistics.median(run["keys"]) for run in runs])
        found["escape"] = median([run["escape"] for run in runs])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the folder (site, nginx logs)")
    args = parser.parse_args()
    print(json.dumps(run(args.deployments, args.loads, args.keep), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
