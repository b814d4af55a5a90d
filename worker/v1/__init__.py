"""Generated from protos/; run `make proto`."""
