"""Benchmark scripts (run them as files: see benchmarks/README.md); a package so tests can import the generator."""
