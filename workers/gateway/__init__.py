"""The regional device gateway: devices connect over WebSocket + TLS 1.3, authenticate with a key
derived from their device key, publish sealed envelopes (produced to the ingest topics keyed by device
id) and receive only their own sealed replies, which the gateway routes from the region's replies topic
without ever holding a key that opens them (``docs/contract.md``, "Gateway"; ``docs/gateway.md``)."""
