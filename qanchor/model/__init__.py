"""The Q-Anchor model: hierarchical user encoder, decoder backbone, anchor and semantic towers."""

from qanchor.model.config import BackboneSettings, LoraSettings, LossSettings, ModelSettings
from qanchor.model.qanchor import QAnchor

__all__ = ["BackboneSettings", "LoraSettings", "LossSettings", "ModelSettings", "QAnchor"]
