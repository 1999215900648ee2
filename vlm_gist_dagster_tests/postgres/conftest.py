"""Tests of the production path on a real PostgreSQL (issue 19): ``deploy/dagster.yaml``, the run queue,
the daemon, pools, automation.

They run only through ``make test-postgres`` (which sets ``VLM_GIST_POSTGRES_TESTS=1``); a plain
``make test`` / ``pytest`` deselects them, as they start a PostgreSQL cluster and a Dagster daemon and
take minutes. When they do run, missing PostgreSQL binaries fail them with the command that installs
them: never a silent pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pg_cluster import PostgresCluster, PostgresUnavailable, start_cluster

HERE = Path(__file__).resolve().parent
ENABLE_ENV = "VLM_GIST_POSTGRES_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE_ENV) == "1":
        return
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if ours:
        ids = {id(item) for item in ours}
        items[:] = [item for item in items if id(item) not in ids]
        config.hook.pytest_deselected(items=ours)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the session (``initdb`` in a temp directory)."""
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


_databases = iter(range(10**6))


@pytest.fixture()
def pg_env(pg_cluster: PostgresCluster) -> dict[str, str]:
    """A new empty database for the test; the ``DAGSTER_PG_*`` variables that point at it."""
    name = f"dagster_test_{next(_databases)}"
    pg_cluster.create_database(name)
    return pg_cluster.env(name)
