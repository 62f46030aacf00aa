"""CLIP plumbing shared by every method: the vision loop, the prompted text encoder, preprocessing.

Importing this package imports nothing heavy; its modules load torch and transformers.
"""

# The backbone of every reference method (AnomalyCLIP, AdaCLIP, Crane, HeadCLIP, DA-CLIP).
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14-336"
