"""Benchmark suites (installed as spbench.suites)."""
