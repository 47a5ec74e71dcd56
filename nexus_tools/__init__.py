"""Tooling on top of the product: benchmarks, the demo, traffic generation, test servers.

It may import every product package; no product package imports it.
"""
