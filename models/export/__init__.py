"""ONNX and TFLite graph writers (see docs/DEVELOPING.md, "Graphs")."""
