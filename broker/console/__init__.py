"""`broker console`: a web console for owners and auditors.

It is only another client of the broker: its backend calls the broker's gRPC API with
the signed-in API key (broker.client and the generated stubs; never the core or the
store), so every action is that key's action, checked by the broker. docs/console.md
describes the pages and the security model."""
