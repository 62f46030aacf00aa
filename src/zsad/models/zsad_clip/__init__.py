from .configuration_zsad_clip import ZeroShotCLIPConfig
from .modeling_zsad_clip import ZeroShotCLIPModel

__all__ = ["ZeroShotCLIPConfig", "ZeroShotCLIPModel"]
