"""The Dagster UI as the dashboard, on a real webserver: a home with two days backfilled through
the replay exchange and two backtests, then GraphQL queries and headless-Chromium screenshots
of the asset graph, an asset's checks and a backtest report's metadata plots.

Screenshots are saved under the test's tmp dir (the path is printed) to look at.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import REPO_ROOT, load_settings
from pipeline.orchestration.instance import dagster_env
from pipeline.runtime.processes import spawn, stop
from tests.daemon import replay_env, write_config
from tests.test_backtest_report import ARGS, CHROMIUM

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "pipeline.runtime.cli"]
GROUPS = ("ingest", "timeframes", "signals", "reports")
ASSETS = ("klines_1m", "candles", "indicators", "signals", "backtest_report")
# Two personalities the two stored days can backtest (the others' warm-up is longer and
# `signalbox backtest` refuses them, naming the days to backfill): two points per plot.
PERSONALITIES = ("scalping", "scalping_tight")


@dataclass
class Dashboard:
    home: Path
    port: int
    env: dict[str, str]
    yesterday: str
    today: str
    shots: Path

    def gql(self, query: str) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.load(resp)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def job(self, name: str, partition: str) -> str:
        """Run a job of the code location for one partition, as the daemon would; its run id."""
        args = [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "pipeline.orchestration.definitions",
        ]
        args += ["-j", name, "--tags", json.dumps({"dagster/partition": partition})]
        r = subprocess.run(
            args, env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0 and "RUN_SUCCESS" in r.stderr, r.stderr[-3000:]
        return re.search(rf" - {name} - ([0-9a-f-]{{36}}) - .*RUN_SUCCESS", r.stderr)[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.replay import ReplayExchange

    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    home.mkdir()
    today = dt.datetime.now(dt.UTC).date()
    y, t = str(today - dt.timedelta(days=1)), str(today)
    tight = root / "scalping_tight.yaml"
    shipped = (REPO_ROOT / "pipeline" / "personalities" / "scalping.yaml").read_text()
    tight.write_text(
        shipped.replace("name: scalping", "name: scalping_tight").replace(
            "threshold: 0.4", "threshold: 0.6"
        )
    )
    cfg = write_config(home, {"personalities": ["scalping", str(tight)]})
    with ReplayExchange(seed=7) as ex:
        env = {**replay_env(home, ex), "SIGNALBOX_CONFIG": str(cfg)}
        _cli(["backfill", "--start", y, "--end", t], env)
        for p in PERSONALITIES:
            _cli(["backtest", "--personality", p, "--start", y, "--end", y], env)
        denv = dagster_env(load_settings(env=env), env)
        port = _free_port()
        log = root / "webserver.log"
        with log.open("wb") as out:
            args = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml"]
            web = spawn(
                [*args, "-h", "127.0.0.1", "-p", str(port)],
                env=denv,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                    break
                except OSError:
                    assert web.poll() is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    time.sleep(0.5)
            shots = root / "screenshots"
            shots.mkdir()
            print(f"\nscreenshots in {shots}")
            yield Dashboard(home, port, denv, y, t, shots)
        finally:
            stop(web)


CHECKS_QUERY = """
query {
  assetNodes(assetKeys: [{path: ["klines_1m"]}, {path: ["indicators"]}]) {
    assetKey { path }
    assetMaterializations(limit: 1) { runId partition timestamp }
    assetChecksOrError { ... on AssetChecks { checks {
      name
      executionForLatestMaterialization { status runId timestamp evaluation { partition } }
      partitionStatuses {
        __typename
        ... on AssetCheckTimePartitionStatuses { ranges { status startKey endKey } }
      }
    } } }
  }
}"""


def ui_status(check: dict) -> str:
    """The status the UI shows for a check (dagster-webserver's own rule, asset-checks list):
    for a partitioned check the statuses of its partitions, else the execution for the
    latest materialization; neither: "Not evaluated"."""
    statuses = check.get("partitionStatuses")
    if statuses:
        seen = {r["status"] for r in statuses.get("ranges") or []}
        for status in ("FAILED", "EXECUTION_FAILED", "IN_PROGRESS", "SKIPPED", "SUCCEEDED"):
            if status in seen:
                return status
        return "NOT_EVALUATED"
    execution = check.get("executionForLatestMaterialization")
    return execution["status"] if execution else "NOT_EVALUATED"


def test_a_slow_check_keeps_its_last_result_after_a_live_run(dashboard: Dashboard):
    """The quality job checks yesterday; a live run then re-materializes today (as every
    minute): the slow checks still show their result, not "Not evaluated"."""
    d = dashboard
    quality = d.job("quality", d.yesterday)
    live = d.job("live", d.today)
    nodes = {n["assetKey"]["path"][0]: n for n in d.gql(CHECKS_QUERY)["assetNodes"]}
    for asset, name in [
        ("klines_1m", "expectations_suite"),
        ("indicators", "warmup_matches_full_history"),
    ]:
        node = nodes[asset]
        latest = node["assetMaterializations"][0]
        assert (latest["runId"], latest["partition"]) == (live, d.today)  # the live run is newest
        (check,) = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == name]
        execution = check["executionForLatestMaterialization"]
        assert execution is not None, f"{name}: no result for the latest materialization"
        assert execution["runId"] == quality and execution["status"] == "SUCCEEDED"
        assert execution["evaluation"]["partition"] == d.yesterday
        ranges = check["partitionStatuses"]["ranges"]
        assert {"status": "SUCCEEDED", "startKey": d.yesterday, "endKey": d.yesterday} in ranges
        assert ui_status(check) == "SUCCEEDED"
        # Today was rewritten after the backfill checked it: no stale verdict for today.
        assert all(r["endKey"] < d.today for r in ranges)


def test_metadata_numbers_are_rounded_for_display(dashboard: Dashboard):
    data = dashboard.gql(
        """query { assetNodes { assetKey { path } assetMaterializations(limit: 5) {
             metadataEntries { label __typename
               ... on FloatMetadataEntry { floatValue }
               ... on JsonMetadataEntry { jsonString } } } } }"""
    )
    numbers = []
    for node in data["assetNodes"]:
        for mat in node["assetMaterializations"]:
            for e in mat["metadataEntries"]:
                text = json.dumps(e.get("floatValue", e.get("jsonString")))
                numbers += [(e["label"], n) for n in re.findall(r"\d+\.\d+", text)]
    assert len(numbers) > 20
    # More than 6 significant digits is float noise (0.30000000000000004), not a measurement.
    noisy = [(k, n) for k, n in numbers if len(n.replace(".", "").lstrip("0")) > 6]
    assert noisy == []


def pixels(png: bytes) -> dict[str, int]:
    """How many pixels of a screenshot are clearly green (Dagster's "passed"), violet (its
    plot lines and points), or anything but near-white."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return {
        "green": int(((g > r + 40) & (g > b + 20)).sum()),
        "violet": int(((b > r + 60) & (b > g + 60)).sum()),
        "ink": int((a.min(axis=-1) < 235).sum()),
    }


Page = tuple[str, list[str], str]  # path, clicks (texts or "zoom_in"), element to shoot


def _browse(d: Dashboard, pages: dict[str, Page]) -> dict[str, tuple[str, bytes, list[bytes]]]:
    """Open each page, click through, wait until the UI settled; its DOM, a screenshot (also
    saved under the test's tmp dir) and screenshots of the elements matching a selector."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: install it with `apt-get install -y chromium`")
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 2600, "height": 1000})
            for name, (path, actions, shoot) in pages.items():
                page.goto(f"http://127.0.0.1:{d.port}{path}")
                page.wait_for_load_state("networkidle")
                for action in actions:
                    if action == "zoom_in":
                        page.locator("button:has([aria-label='zoom_in'])").first.click()
                    else:
                        page.get_by_text(action, exact=True).first.click(timeout=60_000)
                    page.wait_for_load_state("networkidle")
                page.wait_for_timeout(1500)  # charts and the graph's layout animate in
                png = page.screenshot()
                (d.shots / f"{name}.png").write_bytes(png)
                parts = [e.screenshot() for e in page.locator(shoot).all()[:6] if e.is_visible()]
                out[name] = (page.content(), png, parts)
        finally:
            browser.close()
    return out


def test_screenshots_of_the_graph_the_checks_and_the_backtest_plots(dashboard: Dashboard):
    d = dashboard
    expanded = ",".join(f"global@global:{g}" for g in GROUPS).replace("@", "%40")
    pages = _browse(
        d,
        {
            "asset_graph": (
                f"/asset-groups/?expanded={expanded.replace(':', '%3A').replace(',', '%2C')}",
                ["Hide navigation", "zoom_in", "zoom_in"],
                "text=Asset checks",
            ),
            "checks": (
                "/assets/klines_1m?view=checks",
                ["expectations_suite"],
                "text=Passed",
            ),
            "backtest_plots": ("/assets/backtest_report?view=overview", ["Plots"], "canvas"),
        },
    )
    for name, (_, png, parts) in pages.items():
        assert pixels(png)["ink"] > 20_000, name  # not a blank page
        assert parts, f"{name}: nothing to look at"
    # The graph is zoomed in to the nodes' details, whose check marks are green.
    assert pixels(pages["asset_graph"][1])["green"] > 300
    # The suite's "Passed" badge is green; the plots have points and lines drawn.
    assert pixels(pages["checks"][2][0])["green"] > 20
    assert sum(pixels(c)["violet"] for c in pages["backtest_plots"][2]) > 20

    graph = pages["asset_graph"][0]
    for asset in ASSETS:
        assert asset in graph
    # Zoomed in far enough for the nodes' details: checks passed, the home's few partitions
    # (not ~1,400 since 2023), owners' kinds.
    assert "Passed" in graph and "8 partitions" in graph and "talib" in graph

    checks = pages["checks"][0]
    for name in ("complete_minutes", "expectations_suite", "no_duplicates", "ohlc_sane"):
        assert name in checks
    assert "Not evaluated" not in checks and checks.count("Succeeded") >= 5
    assert "Passed" in checks and d.yesterday in checks  # the suite's result, for its day
    assert "great-expectations suite over the day" in checks  # the check's description

    plots = pages["backtest_plots"][0]
    assert "total_return_pct" in plots and plots.count("<canvas") >= 3
    assert "When graphing values by partition" in plots  # one point per personality
