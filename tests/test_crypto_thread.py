"""The crypto thread (broker/api/crypto_thread.py): each job's result or exception
comes back to its caller, jobs run off the event loop's thread, and close() stops it."""

from __future__ import annotations

import asyncio
import threading

import pytest
from nacl.signing import SigningKey

from broker.api.crypto_thread import CryptoThread
from common import usage_signing


def test_results_errors_and_the_thread_they_ran_on():
    crypto = CryptoThread()
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
    assert {t.name for t in threads} == {"crypto"}
    assert threading.main_thread() not in threads
    crypto.close()
    assert not threads[0].is_alive()


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
        result = await services.submit_checked(check(7), op)
        with pytest.raises(ZeroDivisionError):
            await services.submit_checked(lambda: 1 // 0, op)
        with pytest.raises(ValueError, match="refused 8"):
            await services.submit_checked(check(8), refused)
        store.close()
        with pytest.raises(StoreClosed):
            await services.submit_checked(check(9), op)
        return result

    try:
        assert asyncio.run(main()) == {"value": 7}
        # The writer ran the op's batch on the caller's event loop (asyncio.run: this
        # thread), inside its transaction.
        assert ran_on == {"check": "crypto", "op": threading.current_thread().name}
    finally:
        services.crypto.close()
        store.close()
