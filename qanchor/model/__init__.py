"""The Q-Anchor model: hierarchical user encoder, decoder backbone, anchor and semantic towers."""

from qanchor.model.config import BackboneSettings, LossSettings, ModelSettings
from qanchor.model.qanchor import QAnchor

__all__ = ["BackboneSettings", "LossSettings", "ModelSettings", "QAnchor"]
