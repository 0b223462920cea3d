"""What a process shows of itself: Prometheus metrics, liveness and readiness."""
