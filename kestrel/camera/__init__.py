"""Cameras: sources, synthetic scenes with ground truth, the producer, frame headers."""
