"""Memory hygiene after tracing and calibration, and a size summary for configs."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .attention import head_count, recognize

__all__ = ["release_memory", "describe_sizes"]


def release_memory(model: Optional[nn.Module] = None, min_mb: float = 64.0) -> None:
    """Hand freed tensor memory back to the OS (glibc keeps freed blocks otherwise).

    Tracing and calibration allocate activations that are freed before the cut; without
    this the cut's new, smaller weights land on top of them and peak RSS grows. Skipped
    for models under `min_mb` (a garbage-collection pass costs ~0.1 s).
    """
    import ctypes
    import gc

    if model is not None and sum(p.numel() * p.element_size() for p in model.parameters()) < min_mb * 2**20:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def describe_sizes(model: nn.Module) -> dict:
    """Sizes of every Linear/Conv1d and head count, by qualified name (for configs)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.Conv1d):
            out[name] = [m.in_channels, m.out_channels]
        else:
            n = head_count(m) if recognize(m) is not None else None
            if n is not None:
                out[name] = {"heads": n}
    return out
