"""Worker registry: who can run what at which prices, and who is live right now.

Registrations are durable; liveness is not (after a restart workers are live
again with their next heartbeat), so `Liveness` is a plain in-memory table.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

from common import usage_signing
from common.errors import BrokerError, invalid, not_found, precondition
from common.money import MAX_COUNTER, check_price_sheet

from ..store.base import Record, Tx
from . import journal, validate
from .access import Principal

MAX_MODELS = 64


def check_capabilities(caps: Record) -> Record:
    models = list(caps.get("models", []))
    if len(models) > MAX_MODELS:
        raise invalid("capabilities.models", f"at most {MAX_MODELS} models")
    for i, model in enumerate(models):
        validate.ident(model, f"capabilities.models[{i}]")
    memory = caps.get("gpu_memory_bytes", 0)
    if memory < 0:
        raise invalid("capabilities.gpu_memory_bytes", "must not be negative")
    optional = {name: validate.ident(caps.get(name, ""), f"capabilities.{name}",
                                     required=False)
                for name in ("meter", "gpu_uuid", "driver_version")}
    sizes = {}  # from (model, parameter count) pairs, as in Capabilities.model_sizes
    for i, (model, size) in enumerate(caps.get("model_sizes", [])):
        if model not in models or model in sizes or not 0 <= size <= MAX_COUNTER:
            raise invalid(f"capabilities.model_sizes[{i}]",
                          "must be the parameter count of a served model, once per model")
        sizes[model] = size
    return {"resource_class": validate.ident(caps.get("resource_class", ""),
                                             "capabilities.resource_class"),
            "gpu_name": validate.name(caps.get("gpu_name", ""), "capabilities.gpu_name"),
            "gpu_memory_bytes": memory, "models": models,
            "energy_supported": bool(caps.get("energy_supported", False)), **optional,
            "model_sizes": sizes}


def check_endpoint(endpoint: str) -> str:
    validate.ident(endpoint, "endpoint")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid("endpoint", "must be host:port")
    return endpoint


def register(tx: Tx, principal: Principal, worker_id: str, endpoint: str, capabilities: Record,
             prices: Record, now: int, usage_public_key: bytes = b"") -> Record:
    endpoint = check_endpoint(endpoint)
    usage_key = usage_signing.check_public_key(usage_public_key)
    capabilities = check_capabilities(capabilities)
    prices = check_price_sheet(prices, "prices")
    if worker_id:
        existing = get_own_worker(tx, principal, worker_id)
        create_ms = existing["create_ms"]
    else:
        worker_id, create_ms = "wrk_" + secrets.token_hex(8), now
    worker = {"worker_id": worker_id, "provider_id": principal.provider_id, "endpoint": endpoint,
              "capabilities": capabilities, "prices": prices, "active": True,
              "usage_public_key": usage_key,
              "create_ms": create_ms, "update_ms": now}
    tx.put("workers", worker_id, worker)
    journal.append(tx, "worker_registered", {"worker_id": worker_id, "prices": prices,
                                             "provider_id": principal.provider_id}, now)
    return worker


def get_own_worker(tx: Tx, principal: Principal, worker_id: str) -> Record:
    worker = tx.get("workers", validate.ident(worker_id, "worker_id"))
    if worker is None or worker["provider_id"] != principal.provider_id:
        raise not_found("worker", worker_id)
    return worker


def inactive(worker_id: str) -> BrokerError:
    return precondition("WORKER_NOT_ACTIVE", "the worker is deregistered; register again",
                        worker_id=worker_id)


def deregister(tx: Tx, principal: Principal, worker_id: str, now: int) -> Record:
    worker = get_own_worker(tx, principal, worker_id)
    if worker["active"]:
        worker["active"] = False
        tx.put("workers", worker_id, worker)
        journal.append(tx, "worker_deregistered", {"worker_id": worker_id}, now)
    return worker


@dataclass
class Liveness:
    """Lease per worker: live until `lease_ms` after its last heartbeat.

    `_expiry` is a dict, or a table shared by the server processes of a prefork
    broker (a heartbeat to one process must count in the offers of another). Its size
    is bounded by the workers that heartbeated within the lease: expired leases are
    dropped when offers are listed, and by a heartbeat once the table has doubled since
    it was last pruned (workers that died without deregistering leave no trace)."""

    lease_ms: int
    _expiry: MutableMapping[str, int] = field(default_factory=dict)
    _pruned_size: int = field(default=0, init=False, repr=False)  # live at the last pruning

    @property
    def size(self) -> int:
        return len(self._expiry)

    @property
    def remote(self) -> bool:
        """True when the leases are in a database (each call a round trip): callers on
        the event loop then make the calls off it."""
        return bool(getattr(self._expiry, "remote", False))

    def beat(self, worker_id: str, now: int) -> int:
        until = self._expiry[worker_id] = now + self.lease_ms
        if len(self._expiry) > max(64, 2 * self._pruned_size):
            self.live_ids(now)
        return until

    def drop(self, worker_id: str) -> None:
        self._expiry.pop(worker_id, None)

    def live_ids(self, now: int) -> list[str]:
        """The workers whose lease runs; drops the expired leases."""
        leases = list(self._expiry.items())
        for worker_id, until in leases:
            if until <= now:
                self._expiry.pop(worker_id, None)  # another process may have dropped it first
        live = [worker_id for worker_id, until in leases if until > now]
        self._pruned_size = len(live)
        return live


def offers(tx: Tx, live_ids: Iterable[str], resource_class: str, model: str) -> list[Record]:
    """The active workers among `live_ids` (`Liveness.live_ids`, read before: with the
    leases in a database that is a round trip of its own) that match, cheapest first."""
    validate.ident(resource_class, "resource_class", required=False)
    validate.ident(model, "model", required=False)
    found = []
    for worker_id in live_ids:
        worker = tx.get("workers", worker_id)
        if worker is None or not worker["active"]:
            continue
        caps = worker["capabilities"]
        if resource_class and caps["resource_class"] != resource_class:
            continue
        if model and model not in caps["models"]:
            continue
        found.append(worker)
    return sorted(found, key=lambda w: (w["prices"]["gpu_second_price"], w["worker_id"]))
