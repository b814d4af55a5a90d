"""gRPC adapters: validate, call the core, map results and errors."""
