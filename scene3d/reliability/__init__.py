"""Reliability harnesses shared by the tests and `scripts/bench_reliability.py`: property-based
fuzzing of every reader (`fuzz`) and kill / resume of every training script (`crash`)."""
