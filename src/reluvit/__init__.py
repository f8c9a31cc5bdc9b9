"""reluvit: ReLU (and other softmax-free) attention for Vision Transformers, on timm, Lightning and Hydra."""

from reluvit.attention import ACTIVATIONS, POINTWISE, PointwiseAttention, attention_layer
from reluvit.models import SIZES, create_model

__all__ = ["ACTIVATIONS", "POINTWISE", "SIZES", "PointwiseAttention", "attention_layer", "create_model"]
__version__ = "0.1.0"
