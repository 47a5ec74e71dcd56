"""Helpers the tests call directly; fixtures live in the conftest.py files.

Nothing here is a test module, so any test may import it (no test imports another test).
"""
