"""The one exception graph building raises (kept apart so every graph module can raise it)."""
from __future__ import annotations

__all__ = ["GraphBuildError"]


class GraphBuildError(RuntimeError):
    """The model could not be traced into a dependency graph."""
