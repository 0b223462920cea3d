"""Tests of the benchmarks in ``bench/`` (``tests/faults`` holds the fault harness's)."""
