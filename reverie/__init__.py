"""Reverie: a world-model agent that learns in imagination, exported to ONNX and served."""

__version__ = "0.1.0"
