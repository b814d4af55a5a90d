"""Descriptor-driven fuzzing of the broker and worker gRPC surfaces (see runner.py)."""
