"""The wire: sealed envelopes, tensor bodies, result and audit records, dead letters, cloud records."""
