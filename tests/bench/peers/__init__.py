"""Tests of ``bench/peers``: the Quix Streams peer."""
