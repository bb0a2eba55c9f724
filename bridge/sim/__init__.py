"""Simulators of the upstreams, shipped with the product for tests, the demo and benchmarks."""
