"""Local development tools: the single-node broker, the simulated fleet, the demo and its story."""
