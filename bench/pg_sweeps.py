"""Brokers sweeping the same due holds at once, on the real core: how many transactions
run again (serialisation failures) with the sweep's claim (FOR UPDATE SKIP LOCKED) and
without it (every sweep scans and resolves the same rows), at PostgreSQL's default
`max_pred_locks_per_page` (2) and at the 64 the tests' cluster sets.

`--holds` holds on as many wallets fall due together; `--brokers` stores (one per
broker) each run the hold-expiry step (`metering.expire_due`, at most 500 holds per
transaction as in the daemon's sweep, then 20) from their own thread until none is
due. Prints JSON: per case the retries, the seconds taken, and whether each hold
expired exactly once.
Run: .venv/bin/python -m bench.pg_sweeps
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import psycopg

from broker.core import authorizations, journal, ledger, metering
from broker.store import pg_store
from broker.store.pg_store import PgStore
from common.vouchers import Signer
from tests import pg_cluster

from .pg_isolation import CONFIG, KEY_ID, tenant


def run(holds: int, brokers: int, limit: int, claim: bool, per_page: int) -> dict:
    url = pg_cluster.fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_pred_locks_per_page = {per_page}")
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)
    stores = [PgStore(url, pool_size=2, sealer=journal.seal) for _ in range(brokers)]
    now = int(time.time() * 1000)
    first = stores[0]
    first.submit_sync(lambda tx: ledger.ensure_platform_accounts(tx, now))
    made = []
    for _ in range(holds):
        agent = tenant(first, now)
        made.append(first.submit_sync(lambda tx, agent=agent: authorizations.authorize(
            tx, agent, 1000, {}, 1, now, CONFIG, KEY_ID))["authorization_id"])
    due_at = now + 2_000
    signer = Signer("k-bench", None)  # (expiring an unredeemed hold signs nothing)
    saved = pg_store._PgTx.claim
    if not claim:  # every sweep scans and resolves the same rows
        del pg_store._PgTx.claim
    barrier = threading.Barrier(brokers)

    def sweep(store: PgStore) -> None:
        barrier.wait()
        while store.submit_sync(lambda tx: metering.expire_due(tx, due_at, CONFIG, signer,
                                                                limit)):
            pass

    try:
        threads = [threading.Thread(target=sweep, args=(s,)) for s in stores]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        pg_store._PgTx.claim = saved  # type: ignore[method-assign]
    entries = first.read(lambda tx: [*(e for _, e in tx.scan("journal")),
                                     *(e for _, e in tx.scan("journal_unsealed"))])
    expired = sorted(e["data"]["authorization_id"] for e in entries
                     if e["kind"] == "authorization_expired")
    retries = sum(int(s.stats["retries"]) for s in stores)
    for s in stores:
        s.close()
    pg_cluster.recycle(url)
    return {"claim": claim, "max_pred_locks_per_page": per_page, "brokers": brokers,
            "holds": holds, "limit": limit, "retries": retries,
            "seconds": round(elapsed, 3), "each_once": expired == sorted(made)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--holds", type=int, default=200)
    parser.add_argument("--brokers", type=int, default=3)
    args = parser.parse_args()
    out = [run(args.holds, args.brokers, limit, claim, per_page)
           for limit in (500, 20) for per_page in (2, 64) for claim in (False, True)]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
