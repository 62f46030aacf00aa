from .configuration_crane import CraneConfig
from .modeling_crane import CraneModel

__all__ = ["CraneConfig", "CraneModel"]
