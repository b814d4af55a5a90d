"""Layout of a broker data directory and the one-time `broker init`."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.clock import now_ms
from common.files import write_secret

from .core import journal, ledger, tenancy
from .keyring import Keyring
from .store import LmdbStore, Store, dsn, schema


@dataclass(frozen=True)
class DataDir:
    """The data directory, and where the ledger is: LMDB in `ledger/`, or the
    PostgreSQL database of `store_url` (the directory then holds only the keys, which
    every broker on that database mounts)."""

    root: Path
    store_url: str = ""

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def voucher_keys(self) -> Path:
        return self.root / "keys" / "voucher"

    @property
    def receipt_keys(self) -> Path:
        return self.root / "keys" / "receipt"

    @property
    def demo_credentials(self) -> Path:
        return self.root / "demo-credentials.json"

    @property
    def cache_secret_path(self) -> Path:
        return self.root / "keys" / "cache-scope.key"

    def cache_secret(self) -> bytes:
        """The result-cache scope secret, created on first use (mode 0600)."""
        if not self.cache_secret_path.exists():
            write_secret(self.cache_secret_path, secrets.token_hex(32).encode())
        return bytes.fromhex(self.cache_secret_path.read_text().strip())

    def is_initialised(self) -> bool:
        return (self.voucher_keys / "ACTIVE").exists()

    @property
    def store_name(self) -> str:
        """The ledger's location for messages (a DSN's password masked)."""
        return dsn.masked(self.store_url) if self.store_url else str(self.root)

    def open_store(self, *, durable: bool = True, lock: bool = True,
                   create: bool = False, migrate: bool = False) -> Store:
        """The ledger's store. LMDB: `lock` takes the directory lock (DataDirLocked).
        PostgreSQL: `create` makes the tables when there are none, `migrate` brings
        older ones up to date (StoreOpenError when the database cannot be reached or
        its tables are not this release's)."""
        if self.store_url:
            try:
                from .store.pg_store import PgStore
            except ImportError as error:
                raise dsn.StoreOpenError(
                    f"PostgreSQL support is not installed ({error}): "
                    "pip install 'compute-broker[postgres]'") from None
            return PgStore(self.store_url, create=create, migrate=migrate, sealer=journal.seal)
        return LmdbStore(self.ledger, durable=durable, lock=lock, sealer=journal.seal)


class AlreadyInitialised(Exception):
    pass


def init(data_dir: DataDir) -> tuple[str, str]:
    """Create the directory, the voucher signing key, the platform accounts and an
    admin key. Returns (key id of the signing key, admin API key secret).
    With PostgreSQL the database gets its tables; a key directory that exists already
    (the one the other brokers mount) is kept, so long as the database is new."""
    shared_keys = bool(data_dir.store_url) and data_dir.is_initialised()
    if data_dir.is_initialised() and not data_dir.store_url:
        raise AlreadyInitialised(f"{data_dir.root} is already initialised")
    if data_dir.store_url:  # reach the database before anything is written
        store = data_dir.open_store(create=True)
        if store.read(lambda tx: tx.get("meta", schema.KEY)) is not None:
            store.close()
            raise AlreadyInitialised(f"{data_dir.store_name} is already initialised")
    data_dir.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir.root, 0o700)
    if not data_dir.store_url:
        store = data_dir.open_store()  # takes the directory lock first
    try:
        if shared_keys:
            key_id = Keyring(data_dir.voucher_keys).active_id
        else:
            key_id = Keyring.create(data_dir.voucher_keys)
            Keyring.create(data_dir.receipt_keys)
        data_dir.cache_secret()
        data_dir.voucher_keys.parent.chmod(0o700)

        def bootstrap(tx):
            now = now_ms()
            if tx.get("meta", schema.KEY) is not None:
                raise AlreadyInitialised(f"{data_dir.store_name} is already initialised")
            schema.stamp(tx)
            ledger.ensure_platform_accounts(tx, now)
            return tenancy.create_api_key(tx, "admin", now, description="created by broker init")

        admin = store.submit_sync(bootstrap)
    finally:
        store.close()
    return key_id, admin["api_key"]
