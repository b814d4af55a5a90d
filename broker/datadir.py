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
from .store import LmdbStore, schema


@dataclass(frozen=True)
class DataDir:
    root: Path

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

    def open_store(self, *, durable: bool = True) -> LmdbStore:
        return LmdbStore(self.ledger, durable=durable, sealer=journal.seal)


class AlreadyInitialised(Exception):
    pass


def init(data_dir: DataDir) -> tuple[str, str]:
    """Create the directory, the voucher signing key, the platform accounts and an
    admin key. Returns (key id of the signing key, admin API key secret)."""
    if data_dir.is_initialised():
        raise AlreadyInitialised(f"{data_dir.root} is already initialised")
    data_dir.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir.root, 0o700)
    store = data_dir.open_store()  # takes the directory lock first
    try:
        key_id = Keyring.create(data_dir.voucher_keys)
        Keyring.create(data_dir.receipt_keys)
        data_dir.cache_secret()
        data_dir.voucher_keys.parent.chmod(0o700)

        def bootstrap(tx):
            now = now_ms()
            schema.stamp(tx)
            ledger.ensure_platform_accounts(tx, now)
            return tenancy.create_api_key(tx, "admin", now, description="created by broker init")

        admin = store.submit_sync(bootstrap)
    finally:
        store.close()
    return key_id, admin["api_key"]
