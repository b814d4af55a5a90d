"""The crypto threads (broker/api/crypto_threads.py): each job's result or exception
comes back to its caller, jobs run off the event loop's thread, jobs of one key run in
order on one thread, and close() stops them."""

from __future__ import annotations

import asyncio
import threading

import pytest
from nacl.signing import SigningKey

from broker.api.crypto_threads import CryptoThreads
from common import usage_signing


def test_results_errors_and_the_thread_they_ran_on():
    crypto = CryptoThreads(2)
    key = SigningKey(b"\x07" * 32)
    public = bytes(key.verify_key).hex()

    async def main():
        messages = [usage_signing.payload("ses_1", {"gpu_ms": i}, seq=i) for i in range(200)]
        signatures = [usage_signing.sign(key, m) for m in messages]
        signatures[17] = signatures[18]  # one forged report among many
        checked = await asyncio.gather(*(crypto.run(
            lambda m=m, s=s: usage_signing.verify_ahead(public, m, s))
            for m, s in zip(messages, signatures, strict=True)))
        threads = await asyncio.gather(*(crypto.run(threading.current_thread)
                                         for _ in range(10)))
        with pytest.raises(ZeroDivisionError):
            await crypto.run(lambda: 1 // 0)
        return checked, threads

    checked, threads = asyncio.run(main())
    assert [i for i, v in enumerate(checked) if v is None] == [17]
    assert all(v.message == usage_signing.payload("ses_1", {"gpu_ms": i}, seq=i)
               for i, v in enumerate(checked) if v is not None)
    assert {t.name for t in threads} == {"crypto-0", "crypto-1"}  # keyless: in turn
    assert threading.main_thread() not in threads
    crypto.close()
    assert not any(t.is_alive() for t in threads)


def test_a_checked_op_goes_from_the_crypto_thread_to_the_writer(tmp_path):
    """Services.submit_checked on an LmdbStore: the check runs on the crypto thread,
    which queues the op for the store's writer itself; the caller gets the op's result,
    or what the check, the op or the closed store raised."""
    from broker.api.base import Services
    from broker.core.config import CoreConfig
    from broker.core.registry import Liveness
    from broker.store import LmdbStore
    from broker.store.buffered import StoreClosed

    store = LmdbStore(tmp_path / "db", durable=False)
    services = Services(store=store, keyring=None, config=CoreConfig(),  # type: ignore[arg-type]
                        liveness=Liveness(1000, {}))
    ran_on: dict[str, str] = {}

    def check(value):
        def run():
            ran_on["check"] = threading.current_thread().name
            return value
        return run

    def op(value):
        def run(tx):
            ran_on["op"] = threading.current_thread().name
            tx.put("meta", "checked", {"value": value})
            return tx.get("meta", "checked")
        return run

    def refused(value):
        def run(tx):
            raise ValueError(f"refused {value}")
        return run

    async def main():
        result = await services.submit_checked(check(7), op, "ses_1")
        with pytest.raises(ZeroDivisionError):
            await services.submit_checked(lambda: 1 // 0, op, "ses_1")
        with pytest.raises(ValueError, match="refused 8"):
            await services.submit_checked(check(8), refused, "ses_1")
        store.close()
        with pytest.raises(StoreClosed):
            await services.submit_checked(check(9), op, "ses_1")
        return result

    try:
        assert asyncio.run(main()) == {"value": 7}
        # The writer ran the op's batch on the caller's event loop (asyncio.run: this
        # thread), inside its transaction.
        assert ran_on["check"].startswith("crypto-")
        assert ran_on["op"] == threading.current_thread().name
    finally:
        services.crypto.close()
        store.close()


def test_checked_ops_of_one_key_reach_the_writer_in_order(tmp_path):
    """Many sessions' checks in flight at once over two threads, the early ones of each
    session the slow ones: each session's ops still run in the writer in the order they
    were submitted, and each session's checks all ran on one thread."""
    import time

    from broker.api.base import Services
    from broker.core.config import CoreConfig
    from broker.core.registry import Liveness
    from broker.store import LmdbStore

    store = LmdbStore(tmp_path / "db", durable=False)
    services = Services(store=store, keyring=None, config=CoreConfig(),  # type: ignore[arg-type]
                        liveness=Liveness(1000, {}))
    services.crypto = CryptoThreads(2)
    sessions = list(range(7))  # (int keys: hash(i) == i, so both threads get some)
    reports = 20
    applied: dict[int, list[int]] = {s: [] for s in sessions}
    checked_on: dict[int, set[str]] = {s: set() for s in sessions}

    def check(session_id, seq):
        def run():
            checked_on[session_id].add(threading.current_thread().name)
            time.sleep(0.002 if seq % 5 == 0 else 0)  # some checks slower than the next
            return seq
        return run

    def op(session_id):
        def make(seq):
            def run(tx):
                applied[session_id].append(seq)
                return seq
            return run
        return make

    async def main():
        return await asyncio.gather(*(
            services.submit_checked(check(s, seq), op(s), s)
            for seq in range(reports) for s in sessions))

    try:
        results = asyncio.run(main())
        assert sorted(results) == sorted(seq for seq in range(reports) for _ in sessions)
        assert applied == {s: list(range(reports)) for s in sessions}
        assert all(len(names) == 1 for names in checked_on.values())
        assert set().union(*checked_on.values()) == {"crypto-0", "crypto-1"}
    finally:
        services.crypto.close()
        store.close()
