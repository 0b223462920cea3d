"""Where a process's CPU goes during a bench load: a thread-CPU-weighted stack sampler
(``sampler.py``), ``python -m bench.profile exec <module> ...`` to run a module under it, and the
buckets the samples are summed into (``buckets.py``)."""
