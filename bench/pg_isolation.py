"""SERIALIZABLE with retries vs REPEATABLE READ with row locks, on the real core.

Each thread authorizes (and cancels) on its own wallet, or on the shared one
(`--shared`: every op on one wallet, the worst case). Prints ops/s and retries per
isolation level as JSON. Run: .venv/bin/python -m bench.pg_isolation
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from broker.core import authorizations, journal, ledger, tenancy, wallets
from broker.core.access import Principal
from broker.core.config import CoreConfig
from broker.store.pg_store import PgStore
from tests import pg_cluster

CONFIG = CoreConfig()
KEY_ID = "k-bench"


def tenant(store: PgStore, now: int) -> Principal:
    def op(tx):
        owner = tenancy.create_owner(tx, "owner", now)
        tenancy.credit_treasury(tx, owner["owner_id"], 10**12, now)
        wallet = wallets.create_wallet(tx, owner["owner_id"], "w", 10**11, 0, now, CONFIG)
        wallets.fund_wallet(tx, owner["owner_id"], wallet["wallet_id"], 10**11, now)
        return owner, wallet
    owner, wallet = store.submit_sync(op)
    return Principal("key_" + wallet["wallet_id"], "agent", owner["owner_id"],
                     wallet["wallet_id"])


def run(isolation: str, threads: int, seconds: float, shared: bool) -> dict:
    url = pg_cluster.fresh_database()
    store = PgStore(url, pool_size=threads, isolation=isolation, sealer=journal.seal)
    now = int(time.time() * 1000)
    store.submit_sync(lambda tx: ledger.ensure_platform_accounts(tx, now))
    agents = [tenant(store, now)] * threads if shared else [tenant(store, now)
                                                            for _ in range(threads)]
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        while time.monotonic() < stop:  # a StoreUnavailable (retries spent) ends the thread
            t = int(time.time() * 1000)
            made = store.submit_sync(lambda tx, t=t: authorizations.authorize(
                tx, agents[i], 1000, {}, 60, t, CONFIG, KEY_ID))
            store.submit_sync(lambda tx, t=t, made=made: authorizations.cancel(
                tx, agents[i], made["authorization_id"], t))
            done[i] += 2

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    retries = store.stats["retries"]
    store.close()
    pg_cluster.recycle(url)
    return {"isolation": isolation, "threads": threads, "shared_wallet": shared,
            "ops_per_s": round(sum(done) / elapsed), "retries": int(retries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    out = [run(iso, args.threads, args.seconds, shared)
           for shared in (False, True) for iso in ("serializable", "repeatable read")]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
