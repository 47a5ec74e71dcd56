"""Emotion model family: text -> 7 Ekman labels with a hashed n-gram embedding bag (numpy-trained)."""

#: the family's name in the registry, its bundles' manifest ``family`` and its graphs' name
NAME = "emotion"
#: the metric its evaluation reports and federated rounds maximise
SCORE_NAME = "macro_f1"
