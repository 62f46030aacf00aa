from .configuration_anomalyclip import AnomalyCLIPConfig
from .modeling_anomalyclip import AnomalyCLIPModel

__all__ = ["AnomalyCLIPConfig", "AnomalyCLIPModel"]
