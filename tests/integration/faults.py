"""Helpers for the exactly-once tests: product-style writes, lake/store comparison, CLI processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg

from pipelines.read import read_table
from pipelines.tables import RAW_EVENTS

PROJECT = Path(__file__).resolve().parents[2]
LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")
TENANT = "00000000-0000-4000-8000-000000000001"
TENANT_A = "00000000-0000-4000-8000-00000000000a"
TENANT_B = "00000000-0000-4000-8000-00000000000b"


def write_event(conn: psycopg.Connection, event_at: datetime, event_id: str | None = None, tenant: str = TENANT) -> str:
    """Insert one event the way a product does: as eventstore_app, in its tenant. No commit."""
    event_id = event_id or str(uuid.uuid4())
    aggregate_id = str(uuid.uuid4())
    conn.execute("SET ROLE eventstore_app")
    conn.execute("SELECT set_config('app.current_tenant_id', %s, false)", (tenant,))
    conn.execute(
        "INSERT INTO eventstore.events (event_id, tenant_id, aggregate_kind, aggregate_id, event_name,"
        " event_payload, aggregate_snapshot, event_at) VALUES (%s, %s, 'Patient', %s, 'PatientRegistered', %s, %s, %s)",
        (
            event_id,
            tenant,
            aggregate_id,
            json.dumps({"actor": {"user_id": "test", "role": "pharmacist"}}),
            json.dumps({"version": 1, "status": "active", "name": {"family": "試験", "given": "太郎"}}),
            event_at,
        ),
    )
    conn.execute("RESET ROLE")
    return event_id


def put(conn, kind, aggregate_id, name, at, snapshot, actor="u-1", tenant: str = TENANT_A, event_id=None) -> str:
    """One event written the way a product writes it (role eventstore_app, its tenant), committed."""
    event_id = event_id or str(uuid.uuid4())
    with conn.transaction():
        conn.execute("SET LOCAL ROLE eventstore_app")
        conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (tenant,))
        conn.execute(
            "INSERT INTO eventstore.events (event_id, tenant_id, aggregate_kind, aggregate_id, event_name,"
            " event_payload, aggregate_snapshot, event_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                event_id,
                tenant,
                kind,
                aggregate_id,
                name,
                json.dumps({"actor": {"user_id": actor, "name": f"薬剤師 {actor}", "role": "pharmacist"}}),
                json.dumps(snapshot, ensure_ascii=False),
                datetime.fromisoformat(at),
            ),
        )
    return event_id


def store_ids(store) -> Counter:
    with psycopg.connect(store.admin_dsn) as conn:
        return Counter(r[0] for r in conn.execute("SELECT event_id::text FROM eventstore.events"))


def lake_ids(settings) -> Counter:
    rows = read_table(settings, RAW_EVENTS, limit=None).rows
    return Counter(rows.column("event_id").to_pylist())


def assert_exactly_once(settings, store) -> None:
    lake, source = lake_ids(settings), store_ids(store)
    duplicated = [k for k, n in lake.items() if n > 1]
    assert not duplicated, f"duplicated in raw_events: {duplicated[:5]}"
    assert set(lake) == set(source), (
        f"missing {sorted(set(source) - set(lake))[:5]}, extra {sorted(set(lake) - set(source))[:5]}"
    )


def cli_env(store, warehouse: str, profile: str = "local", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_") or k == "LAKEHOUSE_CACHE"}
    env.update(
        {
            "LAKEHOUSE_PROFILE": profile,
            "LAKEHOUSE_PG_DSN": store.dsn,
            "LAKEHOUSE_PG_ADMIN_DSN": store.admin_dsn,
            "LAKEHOUSE_WAREHOUSE": warehouse,
        }
    )
    env.update(extra)
    return env


class Process:
    """A `lakehouse` command in its own process group, its stderr collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self._stdout = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [LAKEHOUSE, *args],
            env=env,
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        """True once a stderr line contains text; False if the process ended or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return any(text in line for line in self.lines)
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL the whole group: the Python driver and its JVM."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        self.proc.wait(timeout)
        self._reader.join(10)
        self._stdout.seek(0)
        return self.proc.returncode, self._stdout.read(), "".join(self.lines)
