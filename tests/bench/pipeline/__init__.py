"""Tests of ``bench/pipeline``: its pure parts (no broker)."""
