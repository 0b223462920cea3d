"""The peer: what a user writes instead of edgestream, run by ``make bench`` beside the pipeline.

``bench/peers/quix.py`` is a plain Quix Streams application (``python -m bench.pipeline peer``): it
consumes a region's ingest topics, opens each envelope with edgestream's own contract code and keys
(``opener.py``), runs onnxruntime on it alone, and produces the result record to the topic the devices
read their answers from; at Quix's default at-least-once or at its exactly-once.
"""
