"""Funnel model family: session features -> P(purchase) with a small numpy-trained MLP."""
