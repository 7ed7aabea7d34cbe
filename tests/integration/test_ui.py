"""The Dagster UI as data engineers use it: `dagster dev` on loopback (webserver and daemon, the
project's conf/dagster.yaml), a real browser (Debian's chromium driven by Playwright, headless),
real runs in their own processes against real PostgreSQL and a local warehouse.

- A backfill of two days of raw_events launched by clicks in the asset graph (select the node,
  Materialize selected, type the range, Launch backfill): raw_events then holds exactly those days'
  events. A screenshot of the finished backfill is saved under test-artifacts/.
- FC-08: a backfill of five days, one run (own process, own SparkSession) per day, with two runs
  allowed at a time: the pool lets one write raw_events at a time, the others wait in the queue;
  every day whole, each its own commit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pipelines import lake
from pipelines.eventstore.generate import generate_events
from pipelines.tables import RAW_EVENTS
from tests.conftest import _free_port, make_settings
from tests.integration.faults import PROJECT, cli_env, lake_ids

pytestmark = pytest.mark.ui

ARTIFACTS = PROJECT / "test-artifacts"
CHROMIUM = os.environ.get("LAKEHOUSE_CHROMIUM", "/usr/bin/chromium")
# Chromium as the machine's probe runs it: no sandbox as root, no background traffic to the
# closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 600


@dataclass
class DagsterUI:
    url: str
    home: Path
    store: object
    warehouse: str
    days: list[str]  # the event days of the store, oldest first (configured zone)
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body
        return body["data"]

    def backfill_status(self, backfill_id: str) -> str:
        data = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) {"
            " __typename ... on PartitionBackfill { status } } }",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]["status"]

    def backfill_runs(self, backfill_id: str) -> list[dict]:
        data = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {"
            " runs(limit: 50) { runId status creationTime startTime endTime } } } }",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]["runs"]

    def wait_for_runs(self, backfill_id: str, count: int) -> list[dict]:
        """The backfill's runs, once `count` of them have ended (the backfill's own status lags by
        up to the daemon's 30-second interval)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            runs = self.backfill_runs(backfill_id)
            if len(runs) == count and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
                return runs
            time.sleep(2)
        raise AssertionError(f"backfill {backfill_id}: runs {runs} after {TIMEOUT} s; see {self.log}")

    def wait_for_backfill(self, backfill_id: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            status = self.backfill_status(backfill_id)
            if status not in {"REQUESTED", "CANCELING"}:
                return status
            time.sleep(2)
        raise AssertionError(f"backfill {backfill_id} still {status} after {TIMEOUT} s; see {self.log}")


def _store_days(store, zone: str) -> list[str]:
    with psycopg.connect(store.admin_dsn) as conn:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT (event_at AT TIME ZONE %s)::date FROM eventstore.events ORDER BY 1", (zone,)
            )
        ]


def store_counts(store, days: list[str], zone: str = "Asia/Tokyo") -> dict[str, int]:
    """Events per day of `days`, counted by PostgreSQL."""
    with psycopg.connect(store.admin_dsn) as conn:
        rows = conn.execute(
            "SELECT (event_at AT TIME ZONE %s)::date::text, count(*) FROM eventstore.events"
            " WHERE (event_at AT TIME ZONE %s)::date = ANY(%s::date[]) GROUP BY 1",
            (zone, zone, days),
        ).fetchall()
    return {day: dict(rows).get(day, 0) for day in days}


def lake_counts(settings) -> dict[str, int]:
    rows = lake.open_table(settings, RAW_EVENTS).to_pyarrow_table(columns=["event_date"])
    counts: dict[str, int] = {}
    for day in rows.column("event_date").to_pylist():
        counts[str(day)] = counts.get(str(day), 0) + 1
    return counts


@pytest.fixture(scope="module")
def dagster_ui(new_store, tmp_path_factory) -> Iterator[DagsterUI]:
    store = new_store()
    # Recent days, so that the UI's default partition view (the last 90 days) shows them.
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=20)
    generate_events(store.admin_dsn, 600, tenants=2, seed=81, start=start, days=12)
    root = tmp_path_factory.mktemp("dagster-ui")
    home, warehouse, log = root / "home", str(root / "warehouse"), root / "dagster-dev.log"
    home.mkdir()
    shutil.copy(PROJECT / "conf" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    # The schedules stay on but tick once a year: these tests decide which days the lake holds.
    env = cli_env(
        store,
        warehouse,
        DAGSTER_HOME=str(home),
        LAKEHOUSE_SYNC_CRON="0 0 1 1 *",
        LAKEHOUSE_RECONCILE_CRON="0 0 1 1 *",
        PYTHONUNBUFFERED="1",
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)]
            + ["-m", "dagster_project"],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ui = DagsterUI(f"http://127.0.0.1:{port}", home, store, warehouse, _store_days(store, "Asia/Tokyo"), log)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                data = ui.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
                if data["repositoriesOrError"].get("nodes"):
                    break
            except (OSError, AssertionError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield ui
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _launch_backfill_by_clicks(page, ui: DagsterUI, first: str, last: str) -> str:
    """From the asset graph: select raw_events, Materialize selected, type the day range, launch.

    Returns the backfill's id (from the notice the UI shows).
    """
    page.goto(ui.url)
    page.get_by_role("link", name="Lineage").click()
    skip = page.get_by_role("button", name="Skip")  # the community dialog of a first visit
    try:
        skip.wait_for(timeout=8000)
        skip.click()
    except Exception:
        pass
    # The raw_events node of the graph, then its Materialize button: a backfill of that asset.
    page.get_by_text("raw_events", exact=True).last.click()
    page.get_by_role("button", name="Materialize selected").click()
    partitions = page.get_by_role("dialog").get_by_role("textbox")
    partitions.fill(f"[{first}...{last}]")
    partitions.press("Enter")
    page.get_by_text("2 partitions").wait_for()
    page.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text("Created backfill")
    toast.wait_for(timeout=30000)
    return toast.inner_text().split("Created backfill", 1)[1].split()[0]


def test_backfill_of_two_days_from_the_ui(dagster_ui):
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), (
        f"no chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does) "
        "or point LAKEHOUSE_CHROMIUM at one"
    )
    ui = dagster_ui
    first, last = ui.days[1], ui.days[2]
    assert date.fromisoformat(last) - date.fromisoformat(first) == timedelta(days=1)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30000)
            try:
                backfill = _launch_backfill_by_clicks(page, ui, first, last)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "backfill-launch-failed.png"))
                raise
            assert ui.wait_for_backfill(backfill) == "COMPLETED_SUCCESS", ui.log.read_text()[-3000:]
            page.goto(f"{ui.url}/runs/b/{backfill}")
            page.get_by_text("Succeeded").first.wait_for(timeout=60000)
            page.get_by_text(f"{first}...{last}").first.wait_for()
            shot = ARTIFACTS / f"backfill-{first}-{last}.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot of the finished backfill: {shot}")

    settings = make_settings(ui.store, ui.warehouse)
    expected = store_counts(ui.store, [first, last])
    assert all(expected.values())
    assert lake_counts(settings) == expected, "the lake holds exactly those days' events"
    with psycopg.connect(ui.store.admin_dsn) as conn:
        ids = {
            r[0]
            for r in conn.execute(
                "SELECT event_id::text FROM eventstore.events"
                " WHERE (event_at AT TIME ZONE 'Asia/Tokyo')::date BETWEEN %s AND %s",
                (first, last),
            )
        }
    assert set(lake_ids(settings)) == ids and max(lake_ids(settings).values()) == 1


def test_five_days_in_parallel_runs_are_serialized_per_table_fc08(dagster_ui):
    ui = dagster_ui
    days = ui.days[4:13:2][:5]  # five days, none next to another: one run each
    assert len(days) == 5
    settings = make_settings(ui.store, ui.warehouse)
    before = set(lake_counts(settings))
    version_before = lake.delta_version(settings, RAW_EVENTS)
    launched = ui.graphql(
        "mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {"
        " __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }",
        {"params": {"partitionNames": days, "assetSelection": [{"path": [RAW_EVENTS]}], "fromFailure": False}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    runs = ui.wait_for_runs(launched["backfillId"], count=5)

    counts = lake_counts(settings)
    assert {day: counts.get(day, 0) for day in days} == store_counts(ui.store, days)
    assert set(counts) == before | {d for d in days if store_counts(ui.store, [d])[d]}, "no other day was touched"
    assert max(lake_ids(settings).values()) == 1, "nothing twice"
    repairs = [
        c
        for c in lake.commits(settings, RAW_EVENTS)
        if c.version > version_before and (c.user_metadata or {}).get("repair")
    ]
    assert sorted(c.user_metadata["repair"][0] for c in repairs) == days, "each day its own commit"

    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    by_start = sorted(runs, key=lambda r: r["startTime"])
    for earlier, later in zip(by_start, by_start[1:], strict=False):
        assert earlier["endTime"] <= later["startTime"], "two runs wrote raw_events at once"
    assert any(r["creationTime"] < e["endTime"] for e, r in zip(by_start, by_start[1:], strict=False)), (
        "a queued run waited for the one before it"
    )
