"""The worker's result cache keeps at most `max_entries` results, forgetting the oldest."""

from worker.result_cache import ResultCache, cache_key


def test_the_cache_forgets_the_oldest_beyond_its_bound(tmp_path):
    cache = ResultCache(tmp_path / "cache", max_entries=3)
    try:
        keys = [cache_key("scope", {"prompt": str(i)}) for i in range(5)]
        for i, key in enumerate(keys):
            cache.put(key, {"result_json": str(i)})
            assert cache.size == min(i + 1, 3)
        assert [cache.get(k) for k in keys[:2]] == [None, None]
        assert [cache.get(k)["result_json"] for k in keys[2:]] == ["2", "3", "4"]
        cache.put(keys[2], {"result_json": "2 again"})  # stored anew: now the newest
        cache.put(cache_key("scope", {"prompt": "5"}), {"result_json": "5"})
        assert cache.get(keys[3]) is None
        assert cache.get(keys[2]) == {"result_json": "2 again"}
        assert cache.size == 3
    finally:
        cache.close()
    reopened = ResultCache(tmp_path / "cache", max_entries=3)
    try:
        assert reopened.get(keys[4]) == {"result_json": "4"}
    finally:
        reopened.close()
