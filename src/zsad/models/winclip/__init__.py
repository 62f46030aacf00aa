from .configuration_winclip import WinCLIPConfig
from .modeling_winclip import WinCLIPModel

__all__ = ["WinCLIPConfig", "WinCLIPModel"]
