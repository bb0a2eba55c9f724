"""Performance harness of the bridge: `python -m benchmarks.run` (see docs/performance.md)."""
