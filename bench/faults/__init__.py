"""Fault injection: the exactly-once edge worker under kill -9, zombies, rebalances, broker restarts and
hostile input, checked on the read_committed view.

``python -m bench.faults`` (``__main__.py``) runs every scenario long and writes
``bench/results/faults.json``; ``tests/faults`` runs them shorter. The scenarios (``scenarios.py``)
drive worker processes (``workers.py``) on a fresh region (``env.py``) with traffic (``traffic.py``)
drawn from a corpus of good and hostile records (``corpus.py``, ``records.py``, ``wire.py``), read the
outcome back (``observe.py``) and judge it (``checker.py``).
"""
