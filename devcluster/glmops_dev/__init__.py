"""Local development cluster: a real control plane with simulated GPU nodes, for tests and the demo."""
