"""A short fuzz run inside `make test` (the full one is `make fuzz`): random, broken and
mutated requests for every RPC against a real broker and a real worker process, with no
key, garbage keys and every demo role's key. No INTERNAL/UNKNOWN, no state change from a
rejected call, oversized requests refused with RESOURCE_EXHAUSTED, no crash."""

from tests.fuzz.generator import discover_rpcs
from tests.fuzz.runner import run_fuzz

INPUTS = 1_000
SEED = 20_240_601


def test_every_rpc_is_discovered():
    names = {rpc.full_name for rpc in discover_rpcs()}
    assert "broker.v1.MeteringService.Meter" in names
    assert "worker.v1.WorkerService.Execute" in names
    assert "worker.v1.WorkerService.GetCapabilities" in names
    assert "broker.v1.AdminService.GetLedgerSummary" in names
    assert len(names) >= 27


def test_short_fuzz_run_finds_no_violation():
    fuzzer = run_fuzz(INPUTS, SEED)
    print(fuzzer.summary_line())
    assert fuzzer.stats.inputs == INPUTS
    assert not fuzzer.violations, fuzzer.report()
    # It reached every RPC, and got past validation often enough to matter.
    assert set(fuzzer.stats.per_method) == {rpc.full_name for rpc in fuzzer.rpcs}
    assert fuzzer.stats.accepted > INPUTS // 10
    assert fuzzer.stats.codes["RESOURCE_EXHAUSTED"] > 0  # oversized requests were sent
