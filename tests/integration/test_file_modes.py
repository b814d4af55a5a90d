"""Issue 18 item 11: everything in the broker's ledger directory and the worker's state
directory is private to its user (directories 0700, files 0600), also under umask 000
and also for a data directory that an older version left group/world-readable."""

from __future__ import annotations

import os
import stat

from .conftest import worker_world


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _private_paths(world) -> list:
    ledger = world.broker.data_dir / "ledger"
    state = world.worker.state_dir
    return [(ledger, 0o700), (ledger / "data.mdb", 0o600), (ledger / "lock.mdb", 0o600),
            (ledger / "broker.lock", 0o600),
            (state, 0o700), (state / "cache", 0o700), (state / "cache" / "data.mdb", 0o600),
            (state / "cache" / "lock.mdb", 0o600), (state / "worker-id", 0o600),
            (state / "usage-key", 0o600)]


def _wrong(paths) -> list[str]:
    return [f"{p}: {oct(_mode(p))}" for p, want in paths if _mode(p) != want]


def test_ledger_and_worker_state_are_private_under_any_umask_and_after_an_upgrade(tmp_path):
    old = os.umask(0)  # inherited by the broker and worker processes: nothing masked
    try:
        with worker_world(tmp_path) as world:
            paths = _private_paths(world)
            assert not _wrong(paths)
            # An older version's modes: widened by hand, narrowed again on the next start.
            for path, want in paths:
                path.chmod(0o755 if want == 0o700 else 0o644)
            world.worker.stop()
            world.restart_broker()
            world.worker.start()
            assert not _wrong(paths)
    finally:
        os.umask(old)
