"""Fixtures every test directory may use: PostgreSQL (tests/pg_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pg_cluster


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty database with the broker's tables on the session's throwaway
    PostgreSQL. If PostgreSQL cannot start, the test fails (never skips) and says why."""
    try:
        url = pg_cluster.fresh_database()
    except pg_cluster.PgClusterError as error:
        pytest.fail(f"PostgreSQL for the tests could not start: {error}", pytrace=False)
    yield url
    pg_cluster.recycle(url)
