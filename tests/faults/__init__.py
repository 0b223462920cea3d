"""Fault injection: the exactly-once edge worker under kill -9, zombies, rebalances, broker restarts and
hostile input, checked on the read_committed view (the harness is ``bench/faults``; ``test_faults.py``
runs its scenarios shorter)."""
