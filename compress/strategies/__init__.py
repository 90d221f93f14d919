"""Pruning strategies, by name: `structured` (channels, heads), `unstructured` (weights)."""
from .base import PruneConfig, PruneContext, Strategy, available, get, register
from . import structured, unstructured  # noqa: F401  (registration)
from .unstructured import load_sparse_state_dict, sparse_state_dict

__all__ = ["PruneConfig", "PruneContext", "Strategy", "available", "get", "register",
           "sparse_state_dict", "load_sparse_state_dict"]
