"""The zsad demo as a Hugging Face Space (Gradio SDK): the same app as `zsad demo`.

Set the Space's variables to choose the model: `ZSAD_MODEL` (a registry name from `zsad models`, a zsad
checkpoint repo id, default `crane-mvtec`) and optionally `ZSAD_CLASS_NAME` for class-aware models.
Run it locally with `python examples/space/app.py`.
"""

import os
from pathlib import Path

import torch
from transformers import AutoModel

import zsad
from zsad.demo import build_demo
from zsad.hub.released.registry import registry, training_free_models

MODEL = os.environ.get("ZSAD_MODEL", "crane-mvtec")
CLASS_NAME = os.environ.get("ZSAD_CLASS_NAME") or None
EXAMPLES = sorted(str(path) for path in (Path(__file__).parent / "examples").glob("*.png"))


def load(name: str):
    """A registry name through `zsad.from_zoo`, anything else as a checkpoint (Hub id or folder)."""
    if name in registry() or name in training_free_models():
        return zsad.from_zoo(name)
    return AutoModel.from_pretrained(name)


model = load(MODEL).to("cuda" if torch.cuda.is_available() else "cpu")
demo = build_demo(model, title=f"zsad: {MODEL}", examples=EXAMPLES, class_name=CLASS_NAME)

if __name__ == "__main__":
    demo.launch()
