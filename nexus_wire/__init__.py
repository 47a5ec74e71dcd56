"""Every format that crosses a process, defined once: both sides of each exchange import it.

Imports nothing of the project (only the standard library, pydantic and cryptography), so
the edge, the hub, the federated apps and the model families can all build on it.
"""
