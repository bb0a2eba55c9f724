"""Operating the bridge: Prometheus metrics, the probes server and logging."""
