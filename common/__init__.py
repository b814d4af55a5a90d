"""What the broker, the worker and the clients share, apart from the broker itself.

The wire formats and their checks (vouchers, usage reports, receipts, canonical JSON,
money rules), the mapping of errors to gRPC status, the conversions between records and
protobuf messages, the settings machinery, logging, TLS and the gRPC server plumbing
both daemons use. It imports only the generated stubs (broker.v1, worker.v1) and never
the rest of the broker: `make lint` (import-linter) keeps it so.
"""
