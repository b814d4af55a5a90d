"""`make bench`: broker throughput and latency against a bare grpc.aio baseline.

scripts/bench.py runs the figures; this package holds the pieces: the bench broker
launcher (server), the bare echo server (echo), the multi-process load harness
(harness), the client workloads (workloads), the tenants and workers the figures use
(world) and the big-ledger builder (ledger_fill). docs/performance.md has the results.
"""
