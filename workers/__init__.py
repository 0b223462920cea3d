"""Runnable processes: the local broker, the edge worker, the device fleet, the demo."""
