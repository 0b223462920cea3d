"""What sealing the fast replies costs (``python -m bench.replies``): µs per reply on the worker and per
opened reply on a device."""
