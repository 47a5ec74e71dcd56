"""Emotion, accurate tier: all-MiniLM-L6-v2 fine-tuned on GoEmotions-Ekman, served as int8 ONNX (and TFLite).

Training (``finetune.py``, ``export.py``, ``tflite_export.py``) imports torch; serving
(``tokens.py``, ``model.py``) needs only ``tokenizers``, numpy and a runtime.
"""

#: the family's name in the registry and its bundles' manifest ``family``
NAME = "emotion-accurate"
#: the emotion family this is a tier of, and which tier (``nexus models train emotion --tier accurate``)
GROUP = "emotion"
TIER = "accurate"
SCORE_NAME = "macro_f1"
#: the arrays of a federated update: the head only, head_w [hidden, labels] and head_b [labels] (task.py, head.py)
HEAD_W, HEAD_B = "head_w", "head_b"
