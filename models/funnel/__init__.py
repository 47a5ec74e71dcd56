"""Funnel model family: session features -> P(purchase) with a small numpy-trained MLP."""

#: the family's name in the registry, its bundles' manifest ``family`` and its graphs' name
NAME = "funnel"
#: the metric its evaluation reports and federated rounds maximise
SCORE_NAME = "roc_auc"
