"""Benchmarks: each module runs as ``python -m bench.<name>`` and writes ``bench/results/<name>.*``."""
