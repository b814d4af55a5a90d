"""A broker core on a MemoryStore: no sockets, no disk, a clock the test controls."""

from __future__ import annotations

from dataclasses import dataclass, field

from nacl.signing import SigningKey

from broker.core import audit, journal, ledger, tenancy, wallets
from broker.core.access import Principal
from broker.core.config import CoreConfig
from broker.store import MemoryStore
from common.vouchers import Signer

T0 = 1_800_000_000_000


@dataclass
class World:
    # Any Store (tests/stores.py model_store); the memory store unless a test says.
    store: MemoryStore = field(default_factory=lambda: MemoryStore(sealer=journal.seal))
    config: CoreConfig = field(default_factory=lambda: CoreConfig(fee_bps=250,
                                                                  report_interval_ms=1000))
    signer: Signer = field(default_factory=lambda: Signer("k-test", SigningKey(b"\x01" * 32)))
    now: int = T0

    def __post_init__(self):
        self.run(lambda tx: ledger.ensure_platform_accounts(tx, self.now))

    def run(self, op):
        return self.store.submit_sync(op)

    def read(self, fn):
        return self.store.read(fn)

    def verify_keys(self):
        return {self.signer.key_id: self.signer.signing_key.verify_key}

    def violations(self) -> list[str]:
        return self.read(audit.check)

    def balance(self, account_id: str) -> dict:
        return self.read(lambda tx: ledger.balance(ledger.get_account(tx, account_id)))

    def tenant(self, treasury: int = 1_000_000, cap: int = 100_000, refill_target: int = 50_000,
               funded: int = 50_000):
        """An owner with a credited treasury and one funded wallet; returns principals."""
        def op(tx):
            owner = tenancy.create_owner(tx, "owner", self.now)
            if treasury:
                tenancy.credit_treasury(tx, owner["owner_id"], treasury, self.now)
            wallet = wallets.create_wallet(tx, owner["owner_id"], "w", cap, refill_target,
                                           self.now, self.config)
            if funded:
                wallets.fund_wallet(tx, owner["owner_id"], wallet["wallet_id"], funded, self.now)
            return owner, wallet
        owner, wallet = self.run(op)
        agent = Principal("key_agent_" + wallet["wallet_id"], "agent", owner["owner_id"],
                          wallet["wallet_id"])
        owner_p = Principal("key_owner_" + owner["owner_id"], "owner", owner["owner_id"])
        return owner, wallet, agent, owner_p

    def provider(self):
        provider = self.run(lambda tx: tenancy.create_provider(tx, "prov", self.now))
        return provider, Principal("key_worker_" + provider["provider_id"], "worker",
                                   provider_id=provider["provider_id"])
