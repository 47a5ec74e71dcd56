"""What the edge and the hub services share: HTTP helpers, key and secret files, child processes.

Imports only :mod:`nexus_wire` and :mod:`models`; the edge and the hub import it, never each other.
"""
