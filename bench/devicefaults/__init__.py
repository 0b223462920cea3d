"""``python -m bench.devicefaults``: devices through real gateways and edge workers while a region's
worker is stopped and started again and a region's gateway is killed (``bench/results/devicefaults.*``)."""
