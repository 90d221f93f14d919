"""Flattening and rebuilding module outputs of any container type.

Attention modules and whole models return tensors, tuples, lists, dicts, dataclasses or
transformers' `ModelOutput`s (an ordered dict that is also a dataclass). The tracer hooks
(`tracing.opaque_hook`) and the forward check after a cut (`checks.py`) need the
tensors inside and, for the hooks, the same container rebuilt around new tensors.
`torch.utils._pytree` does this only for registered types (plain dataclasses are not),
so the few container kinds are handled here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Tuple

import torch

__all__ = ["flatten", "tensors"]


def flatten(out: Any) -> Tuple[List[Any], Callable[[List[Any]], Any]]:
    """(leaves, rebuild): the leaves of `out` in order, and a function that puts new leaves back.

    Example:
        >>> leaves, rebuild = flatten({"a": torch.ones(1), "b": (torch.zeros(2), None)})
        >>> len(leaves), rebuild([1, 2, 3])
        (3, {'a': 1, 'b': (2, 3)})
    """
    if isinstance(out, torch.Tensor) or out is None or isinstance(out, (int, float, str, bool)):
        return [out], lambda leaves: leaves[0]
    if isinstance(out, dict):  # dict, OrderedDict, ModelOutput (before the dataclass branch)
        keys = list(out.keys())
        parts = [flatten(out[k]) for k in keys]

        def rebuild_dict(leaves):
            values, i = [], 0
            for sub, fn in parts:
                values.append(fn(leaves[i:i + len(sub)]))
                i += len(sub)
            try:
                return type(out)(**dict(zip(keys, values))) if hasattr(out, "to_tuple") else type(out)(zip(keys, values))
            except TypeError:
                return dict(zip(keys, values))
        return [x for sub, _ in parts for x in sub], rebuild_dict
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        names = [f.name for f in dataclasses.fields(out)]
        parts = [flatten(getattr(out, n)) for n in names]

        def rebuild_dc(leaves):
            values, i = {}, 0
            for n, (sub, fn) in zip(names, parts):
                values[n] = fn(leaves[i:i + len(sub)])
                i += len(sub)
            return dataclasses.replace(out, **values)
        return [x for sub, _ in parts for x in sub], rebuild_dc
    if isinstance(out, (tuple, list)):
        parts = [flatten(o) for o in out]

        def rebuild_seq(leaves):
            values, i = [], 0
            for sub, fn in parts:
                values.append(fn(leaves[i:i + len(sub)]))
                i += len(sub)
            if isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple
                return type(out)(*values)
            return type(out)(values)
        return [x for sub, _ in parts for x in sub], rebuild_seq
    return [out], lambda leaves: leaves[0]  # anything else is one opaque leaf


def tensors(out: Any) -> List[torch.Tensor]:
    """Every tensor inside `out`, in order."""
    return [x for x in flatten(out)[0] if isinstance(x, torch.Tensor)]
