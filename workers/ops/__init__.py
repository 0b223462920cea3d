"""Operator tasks run against a region's topics: DLQ inspection and replay (``dlq``), audit chain
verification (``audit``), what Kafka still holds of a forgotten device (``erasure``)."""
