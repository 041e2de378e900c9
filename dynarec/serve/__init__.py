"""Serving a trained checkpoint: :class:`~dynarec.serve.predictor.Predictor` (raw rows -> predictions)."""
from dynarec.serve.predictor import Encoded, Predictor

__all__ = ["Encoded", "Predictor"]
