"""The ML layer: DINOv2 backbone through timm, anomaly detectors, ONNX export and runtime.

Knows nothing of recipes, cameras, SQLite or Qt: it takes arrays or tensors and returns results.
"""
