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
