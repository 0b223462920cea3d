"""Tests of the benches themselves (what they measure and write), not of their numbers."""
