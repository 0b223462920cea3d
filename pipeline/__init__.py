"""The library: message contract, crypto, codec, batching, inference sessions, models, device SDK."""
