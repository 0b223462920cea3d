"""The aggregator's CPU per record and event-loop lag, with drift thresholds simulated inline or off
the loop (``python -m bench.aggregator``)."""
