"""Keras layers of tfvctr (re-exported here as keras-rs does in `keras_rs/api/layers`)."""

from tfvctr.layers.attention import (
    CategoryChannelAttention,
    CategorySEAttention,
    CategorySpatialAttention,
    CBAMAttention,
    CBAMChannelAttention,
    CBAMSpatialAttention,
    CSCNNAttention,
    SEAttention,
    make_attention,
)
from tfvctr.layers.cross import CrossNetwork
from tfvctr.layers.embedding import NonVisualEmbedding
from tfvctr.layers.linear import LinearLogit

__all__ = [
    "CBAMAttention",
    "CBAMChannelAttention",
    "CBAMSpatialAttention",
    "CSCNNAttention",
    "CategoryChannelAttention",
    "CategorySEAttention",
    "CategorySpatialAttention",
    "CrossNetwork",
    "LinearLogit",
    "NonVisualEmbedding",
    "SEAttention",
    "make_attention",
]
