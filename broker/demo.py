"""Demo data for `make run`: an owner with a funded treasury, an agent wallet, a
provider, and owner, agent and worker keys in <data dir>/demo-credentials.json (0600);
the admin key also alone in <data dir>/admin.key (0600), for `--admin-key-file`."""

from __future__ import annotations

import json

from common.clock import now_ms
from common.files import write_secret

from .core import tenancy, wallets
from .core.config import CoreConfig
from .datadir import DataDir
from .store.base import Store, Tx

TREASURY_CREDIT = 100_000_000  # 100 credits, in micro-credits
WALLET_CAP = 10_000_000
WALLET_REFILL_TARGET = 5_000_000


def bootstrap(store: Store, data_dir: DataDir, config: CoreConfig, admin_key: str) -> bool:
    """Create the demo tenant once. Returns False when it already exists."""
    if data_dir.demo_credentials.exists():
        return False

    def create(tx: Tx) -> dict:
        now = now_ms()
        owner = tenancy.create_owner(tx, "Demo owner", now)
        tenancy.credit_treasury(tx, owner["owner_id"], TREASURY_CREDIT, now)
        wallet = wallets.create_wallet(tx, owner["owner_id"], "demo agent wallet", WALLET_CAP,
                                       WALLET_REFILL_TARGET, now, config)
        wallets.fund_wallet(tx, owner["owner_id"], wallet["wallet_id"], WALLET_REFILL_TARGET,
                            now)
        provider = tenancy.create_provider(tx, "Demo provider", now)
        owner_id, wallet_id = owner["owner_id"], wallet["wallet_id"]
        keys = {role: tenancy.create_api_key(tx, role, now, description="demo", **bind)
                for role, bind in (("owner", {"owner_id": owner_id}),
                                   ("agent", {"owner_id": owner_id, "wallet_id": wallet_id}),
                                   ("worker", {"provider_id": provider["provider_id"]}))}
        return {"owner_id": owner_id, "wallet_id": wallet_id,
                "provider_id": provider["provider_id"], "admin_api_key": admin_key,
                **{f"{role}_api_key": k["api_key"] for role, k in keys.items()}}

    credentials = store.submit_sync(create)
    write_secret(data_dir.demo_credentials, json.dumps(credentials, indent=2).encode())
    if admin_key:
        write_secret(data_dir.root / "admin.key", admin_key.encode() + b"\n")
    return True


def load_credentials(data_dir: DataDir) -> dict:
    return json.loads(data_dir.demo_credentials.read_text())
