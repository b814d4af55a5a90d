"""The broker as the bench runs it: `broker serve` plus what a benchmark needs.

    python -m bench.server --data-dir D --listen HOST:PORT [--processes N] [--no-sync]
                           [--profile DIR] [--store postgresql://...]

Initialises D on first use (the admin key goes to D/admin.key, mode 0600), then serves
exactly as `broker serve` does (the same daemon functions). --no-sync opens the ledger
without fsync (BrokerSettings.durable=False), for the durable_vs_nosync figure only.
--profile (one process) runs the event loop and the store writer thread under cProfile
and writes DIR/loop.prof and DIR/writer.prof on SIGTERM. The profilers count each
thread's CPU time (time.thread_time), not wall time: a thread waiting for the GIL, for
the network or for fsync is not charged for it. --store: the ledger in that PostgreSQL
database (initialised by the first server; the others on it share D's keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import logging
import sys
import time
from pathlib import Path

from broker.api import crypto_threads
from broker.api.base import Limits
from broker.core.config import CoreConfig
from broker.daemon import BrokerSettings, serve, serve_processes
from broker.datadir import DataDir, init
from broker.store import lmdb_store
from common.files import write_secret


def _name_threads() -> None:
    """Give the store's writer thread and the crypto threads their names at the OS level
    too (Linux), so that per-thread CPU in /proc (scripts/bench.py --profile, top -H)
    can tell them apart."""

    def named(run, name: bytes):
        def run_named(self) -> None:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).prctl(15, name)  # PR_SET_NAME
            run(self)
        return run_named

    lmdb_store.LmdbStore._run_writer = named(  # type: ignore[method-assign]
        lmdb_store.LmdbStore._run_writer, b"lmdb-writer")
    crypto_threads._Lane._serve = named(  # type: ignore[method-assign]
        crypto_threads._Lane._serve, b"crypto")  # (both threads: their CPU is summed)


def _profile_writer(directory: Path) -> None:
    """Run the store's writer thread under its own profiler (cProfile sees one thread)."""
    run_writer = lmdb_store.LmdbStore._run_writer

    def profiled(store: lmdb_store.LmdbStore) -> None:
        profile = cProfile.Profile(time.thread_time)
        try:
            profile.runcall(run_writer, store)
        finally:
            profile.dump_stats(directory / "writer.prof")

    lmdb_store.LmdbStore._run_writer = profiled  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--no-sync", action="store_true")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--store", default="", help="a postgresql:// URL (default: LMDB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # At info the broker logs one line per call (broker.rpc): not what is measured here.
    logging.getLogger("broker.rpc").setLevel(logging.WARNING)
    _name_threads()
    data_dir = DataDir(args.data_dir, args.store)
    if not data_dir.is_initialised():
        _, admin_key = init(data_dir)
        write_secret(args.data_dir / "admin.key", admin_key.encode())
    config = CoreConfig()
    # sessions_open holds 10,000 idle streams and 64 busy ones: above the default cap
    # on open streams (limits.meter_streams_total), which is a setting for this reason.
    settings = BrokerSettings(listen=args.listen, durable=not args.no_sync,
                              limits=Limits(meter_streams_total=20_000))
    if args.processes > 1:
        return serve_processes(data_dir, config, settings, args.processes)
    if args.profile is None:
        asyncio.run(serve(data_dir, config, settings))
        return 0
    args.profile.mkdir(parents=True, exist_ok=True)
    _profile_writer(args.profile)
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(asyncio.run, serve(data_dir, config, settings))
    finally:
        profile.dump_stats(args.profile / "loop.prof")
    return 0


if __name__ == "__main__":
    sys.exit(main())
