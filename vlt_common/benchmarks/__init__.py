"""Benchmarks that VLT builds itself, kept apart from the runtime data path: :mod:`.synthdg`, the
procedurally generated domain-generalization benchmark that the demo and the tests train on."""
