from .configuration_headclip import HeadCLIPConfig
from .modeling_headclip import HeadCLIPModel

__all__ = ["HeadCLIPConfig", "HeadCLIPModel"]
