"""Fault injection: the exactly-once edge worker under kill -9, zombies, rebalances, broker restarts and
hostile input, checked on the read_committed view (``harness.py``, ``corpus.py``, ``bench/faults.py``)."""
