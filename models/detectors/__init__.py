"""Anomaly detectors on DINOv2 patch features, chosen by registered name."""
