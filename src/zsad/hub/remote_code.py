"""Remote-code shim so `AutoModel.from_pretrained(repo, trust_remote_code=True)` works without `import zsad`.

Each checkpoint carries a short `modeling_zsad.py` that imports the classes from the installed
`zsad` package, and `config.json["auto_map"]` (`preprocessor_config.json["auto_map"]` for the image
processor) points at it (ECOSYSTEM.md §1.6, "shim pattern"). If zsad
is not installed, transformers answers "This modeling file requires ... zsad. Run pip install zsad".
"""

from __future__ import annotations

import os
from pathlib import Path

SHIM_MODULE = "modeling_zsad"


def write_remote_code_shim(save_directory: str | os.PathLike, config_class: type, model_class: type) -> dict[str, str]:
    """Write `modeling_zsad.py` into `save_directory`; return the `auto_map` for the config."""
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        '"""Loads zsad models with trust_remote_code=True; the code itself comes from `pip install zsad`."""',
        "",
        f"from {config_class.__module__} import {config_class.__name__}",
        f"from {model_class.__module__} import {model_class.__name__}",
        "from zsad.clip.processing import ZSADImageProcessor",
        "",
        f'__all__ = ["{config_class.__name__}", "{model_class.__name__}", "ZSADImageProcessor"]',
        "",
    ]
    (directory / f"{SHIM_MODULE}.py").write_text("\n".join(lines), encoding="utf-8")
    return {
        "AutoConfig": f"{SHIM_MODULE}.{config_class.__name__}",
        "AutoModel": f"{SHIM_MODULE}.{model_class.__name__}",
    }


IMAGE_PROCESSOR_AUTO_MAP = {"AutoImageProcessor": f"{SHIM_MODULE}.ZSADImageProcessor"}
