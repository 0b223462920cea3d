"""``python -m bench.flood``: what one flooding Kafka-native device does to the other devices of its
region and of another region, without and with a Kafka client quota on the region's device principal.

One TLS broker, two regions (``flooda``, ``floodb``), one edge worker process per region (its default
settings), one honest fleet per region at a fixed offered load measuring each request's device round
trip, and a flooder process: a librdkafka producer with region A's device certificate and one device id,
producing sealed envelopes as fast as the broker acknowledges them. Phases (``settings.py``): ``baseline``
(no flood, no quota), ``quota`` (no flood, the quota), ``flood`` (flood, no quota), ``flood_quota`` (flood,
a client quota on ``User:device-flooda`` and ``User:device-floodb``), ``recovery`` (a short flood, then how
soon the honest devices are answered in time again: without a quota, then under each). Writes
``bench/results/flood.json``, ``flood.png`` and ``flood-recovery.png`` (``EDGESTREAM_FLOOD_OUT_DIR``
elsewhere). Timings are reported, never asserted.
"""
