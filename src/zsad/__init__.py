"""zsad: zero-shot anomaly detection with CLIP, as Hugging Face `transformers` models.

`import zsad` is cheap (no torch, no transformers: `zsad --help` answers at once); the model classes
load on first use (`zsad.AnomalyCLIPModel`, `from zsad import ...`). Every zsad model type is registered
with `AutoConfig` / `AutoModel` as soon as both zsad and transformers are imported, in either order, so
`import zsad` followed by `AutoModel.from_pretrained("org/anomalyclip")` returns the right class; the
image processor is registered with `AutoImageProcessor` and the `"zero-shot-anomaly-detection"`
pipeline with `transformers.pipeline` at the same moment.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AdaCLIPConfig": ".models.adaclip",
    "AdaCLIPModel": ".models.adaclip",
    "AnomalyCLIPConfig": ".models.anomalyclip",
    "AnomalyCLIPModel": ".models.anomalyclip",
    "AnomalyDetectionOutput": ".modeling_outputs",
    "CraneConfig": ".models.crane",
    "CraneModel": ".models.crane",
    "DACLIPConfig": ".models.daclip",
    "DACLIPModel": ".models.daclip",
    "DACLIPOutput": ".models.daclip",
    "HeadCLIPConfig": ".models.headclip",
    "HeadCLIPModel": ".models.headclip",
    "WinCLIPConfig": ".models.winclip",
    "WinCLIPModel": ".models.winclip",
    "ZSADConfig": ".configuration_zsad",
    "ZSADImageProcessor": ".clip.processing",
    "ZSADPreTrainedModel": ".modeling_base",
    "ZeroShotCLIPConfig": ".models.zsad_clip",
    "ZeroShotCLIPModel": ".models.zsad_clip",
    "ZeroShotAnomalyDetectionPipeline": ".pipeline",
    "from_zoo": ".hub.released.zoo",
}
_MODEL_CLASS_NAMES = {
    "adaclip": "AdaCLIPModel",
    "anomalyclip": "AnomalyCLIPModel",
    "crane": "CraneModel",
    "daclip": "DACLIPModel",
    "headclip": "HeadCLIPModel",
    "winclip": "WinCLIPModel",
    "zsad_clip": "ZeroShotCLIPModel",
}
__all__ = sorted([*_EXPORTS, "MODEL_CLASSES", "register_auto_classes"])

_model_classes: dict[str, Any] | None = None


def register_auto_classes() -> dict[str, Any]:
    """Import every model and register it with `AutoConfig` / `AutoModel` / `AutoImageProcessor`, and the
    pipeline (idempotent); returns `MODEL_CLASSES` (`{"anomalyclip": AnomalyCLIPModel, ...}`)."""
    global _model_classes
    if _model_classes is None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        if _model_classes is not None:  # importing transformers just now ran the registration (`_Registrar`)
            return _model_classes
        from .clip.processing import ZSADImageProcessor

        classes = {name: getattr(importlib.import_module(_EXPORTS[cls], __name__), cls)
                   for name, cls in _MODEL_CLASS_NAMES.items()}
        for model_class in classes.values():
            AutoConfig.register(model_class.config_class.model_type, model_class.config_class, exist_ok=True)
            AutoModel.register(model_class.config_class, model_class, exist_ok=True)
            AutoImageProcessor.register(
                model_class.config_class,
                image_processor_classes={"pil": ZSADImageProcessor, "torchvision": ZSADImageProcessor},
                exist_ok=True,
            )
        _model_classes = classes
        from .pipeline import register_pipeline

        register_pipeline()
    return _model_classes


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":
        return register_auto_classes()
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        if name.endswith(("Model", "Config")):
            register_auto_classes()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "MODEL_CLASSES"])


def _register_if_ready(finished: str) -> None:
    """Register once transformers is imported and no zsad module (other than `finished`) is mid-import."""
    if _model_classes is not None or "transformers" not in sys.modules:
        return
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{__name__}.") and name != finished and getattr(module.__spec__, "_initializing", False):
            return  # registering now would re-enter a half-imported zsad module; it will call us when done
    register_auto_classes()


class _RegisteringLoader(importlib.abc.Loader):
    """Runs a module's own loader, then `_register_if_ready`."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.inner
        self.inner.exec_module(module)
        _register_if_ready(module.__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Registrar(importlib.abc.MetaPathFinder):
    """Watches `transformers` and zsad's own modules until the zsad models are registered."""

    def find_spec(self, fullname, path=None, target=None):
        if _model_classes is not None:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            return None
        if fullname != "transformers" and not fullname.startswith(f"{__name__}."):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


if "transformers" in sys.modules:
    register_auto_classes()
else:
    sys.meta_path.insert(0, _Registrar())
