"""Private files: secrets created with mode 0600 from the start, never widened, and
the directories that hold data (the ledger, the worker's state) kept 0700/0600."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(PRIVATE_DIR)  # mkdir's mode is masked by umask and skips parents
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """Create `path` if missing and make it 0700, also when it already existed with
    wider modes (a data directory made by an older version)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR)
    return path


def make_private(directory: Path) -> None:
    """Every plain file directly in `directory` 0600 (LMDB's data.mdb and lock.mdb,
    which LMDB creates with the mode it is given, and files made by older versions)."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(PRIVATE_FILE)
