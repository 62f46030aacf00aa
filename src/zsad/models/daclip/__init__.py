from .configuration_daclip import DACLIPConfig
from .modeling_daclip import DACLIPModel, DACLIPOutput

__all__ = ["DACLIPConfig", "DACLIPModel", "DACLIPOutput"]
