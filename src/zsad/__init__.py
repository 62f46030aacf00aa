"""zsad: zero-shot anomaly detection with CLIP, as Hugging Face `transformers` models."""

__version__ = "0.1.0.dev0"
