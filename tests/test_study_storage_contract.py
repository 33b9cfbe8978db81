"""Optuna's own storage contract (`optuna.testing.pytest_storages.StorageTestCase`, shipped in the
installed package, run unchanged) against dsara's storage as workers open it: a
`RetryingRDBStorage` with heartbeats and retries on, on SQLite (retried here as a server would be)
and on PostgreSQL (the server at 127.0.0.1:5432, a database of this module's own, emptied between
tests). Pickling is part of the contract (`test_pickle_storage`).

Without a PostgreSQL server the PostgreSQL half is skipped, unless DSARA_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import os
import uuid

import pytest
from optuna.storages._rdb import models
from optuna.testing.pytest_storages import StorageTestCase
from test_study_postgres import _admin, _server_answers

from dsara.study import retry, writes
from dsara.study.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
KEPT = ("alembic_version", "version_info")  # the schema's version: written once, never emptied


@pytest.fixture(scope="module")
def pg_database():
    why = _server_answers()
    if why and os.environ.get("DSARA_REQUIRE_POSTGRES") == "1":
        raise RuntimeError(f"DSARA_REQUIRE_POSTGRES=1 but {why}")
    if why:
        pytest.skip(why)
    name = f"dsara_contract_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{os.environ.get('DSARA_PG_USER', 'postgres')}@127.0.0.1:5432/{name}"
    finally:
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
               "AND pid <> pg_backend_pid()")
        _admin(f'DROP DATABASE IF EXISTS "{name}"')


def emptied(st):
    """`st` with every table but the schema version emptied (ids from 1 again)."""
    from sqlalchemy import text

    tables = [t.name for t in (*models.BaseModel.metadata.sorted_tables,
                               writes.TrialWrite.__table__) if t.name not in KEPT]
    with st.engine.begin() as conn:
        if st.engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(tables):  # children first
                conn.execute(text(f"DELETE FROM {table}"))
    return st


@pytest.fixture(scope="module", params=["sqlite",
                                        pytest.param("postgresql", marks=pytest.mark.postgres)])
def opened(request, tmp_path_factory):
    """One storage per backend for the module (opening one costs ~1 s here), as workers open it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('contract')}/contract.db"
    else:
        url = request.getfixturevalue("pg_database")
    st = open_storage(url, create=True, heartbeat_s=1, grace_s=60, retry_s=30)
    yield st
    st.engine.dispose()


@pytest.fixture
def storage(opened, monkeypatch):
    monkeypatch.setattr(retry, "NOT_RETRIED", ())  # SQLite goes through the retry layer too
    return emptied(opened)


class TestDsaraStorage(StorageTestCase):
    """Every test of Optuna's storage kit, on `storage` above."""
