"""Model families (emotion, funnel): featurizers, numpy training, export, bundles.

This package imports none of the project's other packages: the edge, the hub and the
federated apps all build on it.
"""
