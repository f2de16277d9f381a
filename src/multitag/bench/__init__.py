"""Benchmarks: each module writes bench/<name>.json + .md; BENCHMARKS.md gathers them."""
