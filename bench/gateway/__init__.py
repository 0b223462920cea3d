"""The gateway bench: many device sessions on one gateway, memory per session, CPU per request, and
the reconnect property (``python -m bench.gateway``)."""
