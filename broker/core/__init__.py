"""The broker's money logic: pure rules over the narrow `Tx` interface; no gRPC, no LMDB."""
