"""Emotion model family: text -> 7 Ekman labels with a hashed n-gram embedding bag (numpy-trained)."""
