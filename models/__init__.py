"""Detectors behind one small interface (filled in by the camera pipeline)."""
