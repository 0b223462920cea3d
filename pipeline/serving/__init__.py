"""Serving a request: admission (replay, rate limit), micro-batching, inference, the served models and
the audit chain."""
