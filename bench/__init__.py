"""Benchmarks: run on demand, print a table, append it to bench/RESULTS.md."""
