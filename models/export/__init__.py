"""Generic ONNX and TFLite graph-building helpers; each family writes its graphs in models/<family>/graphs.py."""
