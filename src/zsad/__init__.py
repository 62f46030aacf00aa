"""zsad: zero-shot anomaly detection with CLIP, as Hugging Face `transformers` models.

Importing zsad registers every model type with `AutoConfig` / `AutoModel` / `AutoImageProcessor`, so
`AutoModel.from_pretrained("org/anomalyclip")` returns the right class, and the
`"zero-shot-anomaly-detection"` pipeline (`transformers.pipeline`).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .clip.processing import ZSADImageProcessor
from .modeling_base import AnomalyDetectionOutput, ZSADConfig, ZSADPreTrainedModel
from .models.adaclip import AdaCLIPConfig, AdaCLIPModel
from .models.anomalyclip import AnomalyCLIPConfig, AnomalyCLIPModel
from .models.crane import CraneConfig, CraneModel
from .models.daclip import DACLIPConfig, DACLIPModel, DACLIPOutput
from .models.headclip import HeadCLIPConfig, HeadCLIPModel
from .models.winclip import WinCLIPConfig, WinCLIPModel
from .models.zsad_clip import ZeroShotCLIPConfig, ZeroShotCLIPModel

__version__ = "0.1.0.dev0"

MODEL_CLASSES: dict[str, type[ZSADPreTrainedModel]] = {
    "adaclip": AdaCLIPModel,
    "anomalyclip": AnomalyCLIPModel,
    "crane": CraneModel,
    "daclip": DACLIPModel,
    "headclip": HeadCLIPModel,
    "winclip": WinCLIPModel,
    "zsad_clip": ZeroShotCLIPModel,
}

for _model_class in MODEL_CLASSES.values():
    AutoConfig.register(_model_class.config_class.model_type, _model_class.config_class, exist_ok=True)
    AutoModel.register(_model_class.config_class, _model_class, exist_ok=True)
    AutoImageProcessor.register(
        _model_class.config_class,
        image_processor_classes={"pil": ZSADImageProcessor, "torchvision": ZSADImageProcessor},
        exist_ok=True,
    )

from .pipeline import ZeroShotAnomalyDetectionPipeline, register_pipeline  # noqa: E402

register_pipeline()

__all__ = [
    "AdaCLIPConfig",
    "AdaCLIPModel",
    "AnomalyCLIPConfig",
    "AnomalyCLIPModel",
    "AnomalyDetectionOutput",
    "CraneConfig",
    "CraneModel",
    "DACLIPConfig",
    "DACLIPModel",
    "DACLIPOutput",
    "HeadCLIPConfig",
    "HeadCLIPModel",
    "MODEL_CLASSES",
    "ZSADConfig",
    "ZSADImageProcessor",
    "ZSADPreTrainedModel",
    "WinCLIPConfig",
    "WinCLIPModel",
    "ZeroShotCLIPConfig",
    "ZeroShotAnomalyDetectionPipeline",
    "ZeroShotCLIPModel",
]
