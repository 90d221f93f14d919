"""Pruning strategies, by name: `structured` (channels, heads), `unstructured` (weights),
`progressive` (loss-guided masks, validation stopping: the prune-then-finetune method),
`layers` (whole blocks: depth pruning)."""
from .base import PruneConfig, PruneContext, Strategy, available, get, register
from . import layers, progressive, structured, unstructured  # noqa: F401  (registration)
from .layers import BlockStack
from .unstructured import load_sparse_state_dict, sparse_state_dict

__all__ = ["PruneConfig", "PruneContext", "Strategy", "available", "get", "register", "BlockStack",
           "sparse_state_dict", "load_sparse_state_dict"]
