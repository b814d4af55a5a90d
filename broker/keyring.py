"""The broker's Ed25519 keys on disk: <data dir>/keys/voucher/<key id>.json (mode 0600).

The active key signs new vouchers and receipts; every key on disk verifies. A key
id is derived from the public key, so a worker can cache keys by id and fetch the
list again only when it meets an unknown id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from .clock import now_ms
from .core.vouchers import Signer
from .files import write_secret


def key_id_for(verify_key: VerifyKey) -> str:
    return "k" + hashlib.sha256(bytes(verify_key)).hexdigest()[:15]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    public_key: bytes
    active: bool
    create_ms: int


class Keyring:
    def __init__(self, directory: Path):
        self.directory = directory
        self._keys: dict[str, tuple[SigningKey, int]] = {}
        active_file = directory / "ACTIVE"
        if not active_file.exists():
            raise FileNotFoundError(f"no voucher signing key in {directory}; run `broker init`")
        for path in sorted(directory.glob("*.json")):
            record = json.loads(path.read_text())
            signing = SigningKey(bytes.fromhex(record["seed"]))
            self._keys[record["key_id"]] = (signing, record["create_ms"])
        self.active_id = active_file.read_text().strip()
        if self.active_id not in self._keys:
            raise ValueError(f"active key {self.active_id} missing from {directory}")

    @staticmethod
    def create(directory: Path) -> str:
        """Generate a new key and make it the active one. Returns its key id."""
        signing = SigningKey.generate()
        key_id = key_id_for(signing.verify_key)
        record = {"key_id": key_id, "seed": bytes(signing).hex(), "create_ms": now_ms()}
        write_secret(directory / f"{key_id}.json", json.dumps(record).encode())
        write_secret(directory / "ACTIVE", key_id.encode())
        return key_id

    @property
    def signer(self) -> Signer:
        return Signer(self.active_id, self._keys[self.active_id][0])

    def signer_for(self, key_id: str) -> Signer:
        return Signer(key_id, self._keys[key_id][0])

    def verify_keys(self) -> dict[str, VerifyKey]:
        return {kid: signing.verify_key for kid, (signing, _) in self._keys.items()}

    def public_keys(self) -> list[PublicKey]:
        keys = [PublicKey(kid, bytes(signing.verify_key), kid == self.active_id, created)
                for kid, (signing, created) in self._keys.items()]
        return sorted(keys, key=lambda k: (not k.active, -k.create_ms))
