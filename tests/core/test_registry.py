"""Workers are offered only while their lease (refreshed by heartbeats) runs."""

import pytest

from broker.core import registry
from common.errors import BrokerError

from .world import World


def register(w: World, principal, cls: str, models: list[str], gpu_price: int):
    return w.run(lambda tx: registry.register(
        tx, principal, "", "127.0.0.1:7000", {"resource_class": cls, "models": models},
        {"gpu_second_price": gpu_price}, w.now))


def test_a_worker_drops_out_of_the_offers_when_its_heartbeats_stop():
    w = World()
    _, worker_key = w.provider()
    a = register(w, worker_key, "cpu", ["tiny-lm"], 900)
    b = register(w, worker_key, "gpu.h100", ["tiny-lm", "big"], 500)
    live = registry.Liveness(lease_ms=15_000)
    offers = lambda now, cls="", model="": [o["worker_id"] for o in w.read(  # noqa: E731
        lambda tx: registry.offers(tx, live.live_ids(now), cls, model))]
    assert offers(w.now) == []  # registered but never heard from
    live.beat(a["worker_id"], w.now)
    live.beat(b["worker_id"], w.now)
    assert offers(w.now) == [b["worker_id"], a["worker_id"]]  # cheapest first
    assert offers(w.now, cls="cpu") == [a["worker_id"]]
    assert offers(w.now, model="big") == [b["worker_id"]]
    live.beat(a["worker_id"], w.now + 10_000)  # only a keeps beating
    assert offers(w.now + 14_999) == [b["worker_id"], a["worker_id"]]
    assert offers(w.now + 15_000) == [a["worker_id"]]
    assert offers(w.now + 25_000) == []


def test_a_deregistered_worker_is_not_offered_even_with_a_lease():
    w = World()
    _, worker_key = w.provider()
    a = register(w, worker_key, "cpu", ["tiny-lm"], 900)
    live = registry.Liveness(lease_ms=15_000)
    live.beat(a["worker_id"], w.now)
    w.run(lambda tx: registry.deregister(tx, worker_key, a["worker_id"], w.now))
    assert w.read(lambda tx: registry.offers(tx, live.live_ids(w.now), "", "")) == []


def test_model_sizes_must_name_served_models_once():
    w = World()
    _, worker_key = w.provider()

    def register_sizes(sizes):
        return w.run(lambda tx: registry.register(
            tx, worker_key, "", "127.0.0.1:7000",
            {"resource_class": "cpu", "models": ["a", "b"], "model_sizes": sizes}, {}, w.now))

    assert register_sizes([("a", 10), ("b", 0)])["capabilities"]["model_sizes"] == {"a": 10,
                                                                                     "b": 0}
    for bad in ([("c", 1)], [("a", 1), ("a", 2)], [("a", -1)]):
        with pytest.raises(BrokerError) as err:
            register_sizes(bad)
        assert err.value.reason == "INVALID_ARGUMENT"
