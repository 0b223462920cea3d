"""Tests of the generated deploy/ files: Prometheus rules and config, the Grafana dashboard."""
