"""Benchmark scripts, run as files (benchmarks/README.md); a package so tests import the generator."""
