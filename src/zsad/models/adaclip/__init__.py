from .configuration_adaclip import AdaCLIPConfig
from .modeling_adaclip import AdaCLIPModel

__all__ = ["AdaCLIPConfig", "AdaCLIPModel"]
