"""CTR models: CSCNN-DCN, DCN, DeepCTR, the VBPR family; the visual tower; losses."""

from tfvctr.models.base import CTRModel
from tfvctr.models.cscnn_dcn import CSCNNDCN, DCNHead
from tfvctr.models.deepctr import (
    DeepCTR,
    DeepCTRHead,
    EnsembleModel,
    build_category_pretrainer,
    transfer_visual_weights,
)
from tfvctr.models.factory import build_model
from tfvctr.models.losses import bpr_loss, in_batch_pairs, pairwise_loss, pointwise_loss
from tfvctr.models.vbpr import VBPR, VBPRHead
from tfvctr.models.visual_tower import build_visual_tower

__all__ = [
    "CTRModel",
    "CSCNNDCN",
    "DCNHead",
    "DeepCTR",
    "DeepCTRHead",
    "EnsembleModel",
    "VBPR",
    "VBPRHead",
    "bpr_loss",
    "build_category_pretrainer",
    "build_model",
    "build_visual_tower",
    "in_batch_pairs",
    "pairwise_loss",
    "pointwise_loss",
    "transfer_visual_weights",
]
