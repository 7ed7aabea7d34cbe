"""Shared fixtures: a real PostgreSQL server, a moto S3 server over HTTP, one SparkSession.

Hermetic: the test session drops every LAKEHOUSE_* and AWS_* variable of the developer's shell
(the jar cache, the PostgreSQL port and the chromium path excepted) and builds its settings
explicitly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PROJECT = Path(__file__).resolve().parent.parent
PG_PORT = int(os.environ.get("LAKEHOUSE_PG_PORT", "55432"))
PG_SUPER = f"postgresql://postgres@127.0.0.1:{PG_PORT}"
S3_BUCKET = "lakehouse-test"

for _name in list(os.environ):
    if (
        _name.startswith("LAKEHOUSE_") and _name not in {"LAKEHOUSE_CACHE", "LAKEHOUSE_PG_PORT", "LAKEHOUSE_CHROMIUM"}
    ) or (_name.startswith("AWS_")):
        del os.environ[_name]
# moto accepts any keys; these are not secrets.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "LAKEHOUSE_PROFILE": "local",
    }
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The project's local PostgreSQL (make test starts it; started here if it is not up)."""
    try:
        psycopg.connect(f"{PG_SUPER}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        subprocess.run([str(PROJECT / "scripts" / "pg.sh"), "start"], check=True)
    return PG_SUPER


@dataclass(frozen=True)
class Store:
    """One event store in its own database."""

    name: str
    admin_dsn: str  # superuser, as `eventstore init` and `generate` use it
    dsn: str  # the pipeline's read-only role


@pytest.fixture(scope="session")
def new_store(pg_server: str) -> Iterator[Callable[[], Store]]:
    """A factory of fresh, initialised event stores; all dropped at the end of the session."""
    from pipelines.eventstore import init_eventstore

    created: list[str] = []

    def make() -> Store:
        name = f"lh_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        store = Store(name, f"{pg_server}/{name}", f"postgresql://lakehouse_pipeline@127.0.0.1:{PG_PORT}/{name}")
        init_eventstore(store.admin_dsn)
        return store

    yield make
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """A moto S3 server in its own process, reached over HTTP like any S3 endpoint."""
    import boto3

    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
            time.sleep(0.2)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def make_settings(store: Store | None, warehouse: str, profile: str = "local", **overrides):
    """Settings for a test: the profile's files, then only what the test passes."""
    from pipelines.settings import load_settings

    environ = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LAKEHOUSE_CACHE"))}
    environ["LAKEHOUSE_WAREHOUSE"] = warehouse
    if store is not None:
        environ["LAKEHOUSE_PG_DSN"] = store.dsn
        environ["LAKEHOUSE_PG_ADMIN_DSN"] = store.admin_dsn
    return load_settings(profile=profile, environ=environ).with_overrides(**overrides)


@pytest.fixture(scope="session")
def spark(moto_endpoint: str, tmp_path_factory):
    """The one SparkSession of the test session, built by the library with S3A set for moto."""
    from pipelines.spark import get_spark

    settings = make_settings(None, f"s3a://{S3_BUCKET}/unused", profile="s3")
    # Few partitions for the tests' small data (one per core of local[2]): a silver build takes a
    # fifth less time than with conf/base.toml's four.
    few = {
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    session = get_spark(settings.with_overrides(spark_conf={**settings.spark_conf, **few}), "lakehouse-tests")
    yield session
    session.stop()


@pytest.fixture()
def local_warehouse(tmp_path: Path) -> str:
    path = tmp_path / "warehouse"
    path.mkdir()
    return str(path)


@pytest.fixture()
def s3_warehouse(moto_endpoint: str) -> str:
    return f"s3a://{S3_BUCKET}/wh-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def stress_rounds() -> int:
    """Rounds of the stress variants: a bounded 3 in `make test`, 50 in `make stress`."""
    return int(os.environ.get("LAKEHOUSE_STRESS_ROUNDS", "3"))


class SparePostgres:
    """A second PostgreSQL cluster of the project's own script, which a test may stop and start."""

    def __init__(self, data: Path, port: int):
        self.env = {**os.environ, "LAKEHOUSE_PG_PORT": str(port), "LAKEHOUSE_PG_DATA": str(data)}
        self.port = port
        self.data = data
        self.store: Store | None = None

    def _pg(self, action: str) -> None:
        subprocess.run([str(PROJECT / "scripts" / "pg.sh"), action], env=self.env, check=True, capture_output=True)

    def start(self) -> None:
        self._pg("start")

    def stop(self) -> None:
        self._pg("stop")


@pytest.fixture()
def spare_postgres(tmp_path: Path) -> Iterator[SparePostgres]:
    from pipelines.eventstore import init_eventstore

    if os.geteuid() == 0:  # the cluster belongs to postgres, which cannot enter root's tmp dirs
        data = Path("/var/lib/postgresql/lakehouse") / f"spare-{uuid.uuid4().hex[:8]}"
    else:
        data = tmp_path / "pg"
    spare = SparePostgres(data, _free_port())
    spare.start()
    admin = f"postgresql://postgres@127.0.0.1:{spare.port}/lakehouse"
    spare.store = Store("lakehouse", admin, f"postgresql://lakehouse_pipeline@127.0.0.1:{spare.port}/lakehouse")
    init_eventstore(admin)
    yield spare
    spare.stop()
    subprocess.run(["rm", "-rf", str(data), f"{data}.log"], check=False)


class TcpProxy:
    """A TCP relay to a real server, in its own process; stop() cuts every connection at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.warehouse = f"s3a://{S3_BUCKET}/proxied-{uuid.uuid4().hex[:8]}"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.tcp_proxy", str(self.port), str(self.target_port)],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture()
def s3_proxy(moto_endpoint: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    proxy.start()
    yield proxy
    proxy.stop()
