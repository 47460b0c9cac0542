"""Benchmark any Django Channels layer with the same workloads: ``python -m bench``."""
