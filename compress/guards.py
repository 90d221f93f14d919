"""Input checks and damage control around `compress.prune`.

Why this module exists: a strategy changes a model in many places (torch-pruning
replaces parameters, the engine swaps attention modules and registers hooks, criteria
leave gradients, unstructured pruning writes zeros in place). This module keeps the
promises `compress.prune` makes about all of them in one place, so that strategies need
not each re-implement them:

* inputs: calibration / validation / example batches are converted to the model's float
  dtype (or refused when they sit on another device), and names in ``ignore=`` /
  ``heads=`` must exist;
* tied parameters (one Parameter used by several modules) are never cut apart: their
  modules are left dense, and the result is checked;
* frozen parameters stay frozen (``requires_grad`` is restored on every tensor the cut
  replaced);
* a model that cannot be deep-copied gets an error that says so;
* a failed ``inplace=True`` prune (any exception, KeyboardInterrupt included) is rolled
  back: every module's parameters, buffers, children, hooks and attributes, and (for
  strategies that write weights in place) the weight values, are put back.
"""
from __future__ import annotations

import copy
import difflib
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["model_dtype_device", "conform", "tied_parameters", "tied_owner_names", "check_tied",
           "requires_grad_record", "restore_requires_grad", "Snapshot", "deepcopy_model", "resolve_name"]


def model_dtype_device(model: nn.Module):
    """(float dtype, device) of the model's parameters; device None when they are spread."""
    dtype, devices = None, set()
    for p in model.parameters():
        devices.add(p.device)
        if dtype is None and p.is_floating_point():
            dtype = p.dtype
    return dtype or torch.float32, (devices.pop() if len(devices) == 1 else None)


def conform(name: str, obj, dtype: torch.dtype, device: Optional[torch.device], convert_ints: bool = False):
    """`obj` (tensor / tuple / list / dict of them) with float tensors in `dtype`.

    Integer tensors are converted too when `convert_ints` (a forecaster reads past values,
    never ids). A tensor on another device than the model is a ValueError.
    """
    if isinstance(obj, torch.Tensor):
        if device is not None and obj.device != device:
            raise ValueError(f"{name} is on {obj.device} but the model is on {device}; move the batches with "
                             f".to({str(device)!r}) (or the model with .to({str(obj.device)!r}))")
        if obj.is_floating_point() and obj.dtype != dtype:
            return obj.to(dtype)
        if convert_ints and not obj.is_floating_point() and not obj.is_complex() and obj.dtype != torch.bool:
            return obj.to(dtype)
        return obj
    if isinstance(obj, tuple):
        return tuple(conform(name, x, dtype, device, convert_ints) for x in obj)
    if isinstance(obj, list):
        return [conform(name, x, dtype, device, convert_ints) for x in obj]
    if isinstance(obj, dict):
        return {k: conform(name, v, dtype, device, convert_ints) for k, v in obj.items()}
    return obj


def tied_parameters(model: nn.Module) -> List[List[str]]:
    """Groups of qualified names that hold one and the same Parameter object."""
    by_id: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def tied_owner_names(tied: List[List[str]]) -> List[str]:
    """Qualified names of the modules that own tied parameters."""
    return sorted({n.rpartition(".")[0] for names in tied for n in names if n.rpartition(".")[0]})


def check_tied(model: nn.Module, tied: List[List[str]]) -> None:
    """Raise if a tied group was cut apart (they must still be one Parameter)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in tied:
        present = [n for n in names if n in params]
        if len({id(params[n]) for n in present}) > 1:
            raise RuntimeError(f"pruning untied the shared parameter {present}; pass the modules that share it "
                               "in ignore=[...] or untie them before pruning")


def requires_grad_record(model: nn.Module) -> Dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}


def restore_requires_grad(model: nn.Module, record: Dict[str, bool]) -> None:
    """Give every parameter the `requires_grad` its name (or, for swapped modules, its module) had."""
    by_module: Dict[str, List[bool]] = {}
    for name, rg in record.items():
        by_module.setdefault(name.rpartition(".")[0], []).append(rg)
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in record:
            rg = record[name]
        else:  # a module swapped by the engine (nn.MultiheadAttention -> q/k/v/out Linears)
            owner = name.rpartition(".")[0]
            flags = None
            while flags is None:
                flags = by_module.get(owner)
                if not owner:
                    break
                owner = owner.rpartition(".")[0]
            rg = all(flags) if flags else p.requires_grad
        if p.requires_grad != rg:
            p.requires_grad_(rg)


class Snapshot:
    """Everything `compress.prune` may change in a model, to put back after a failure.

    Each module's ``__dict__`` (parameters, buffers, children, hooks, attributes) is
    copied shallowly: the engine replaces tensors and modules rather than editing them,
    so the originals survive by reference. With `values=True` the weight values are
    cloned too (for strategies that write zeros in place).
    """

    def __init__(self, model: nn.Module, values: bool = False):
        self.model = model
        self.dicts = []
        for m in model.modules():
            d = dict(m.__dict__)
            for k, v in d.items():
                if isinstance(v, dict):
                    d[k] = copy.copy(v)  # OrderedDicts of params / buffers / modules / hooks
            self.dicts.append((m, d))
        self.tensors = []
        seen = set()
        for p in list(model.parameters()) + list(model.buffers()):
            if id(p) in seen:
                continue
            seen.add(id(p))
            self.tensors.append((p, p.requires_grad, p.grad, p.detach().clone() if values else None))

    def restore(self) -> None:
        for m, d in self.dicts:
            m.__dict__.clear()
            m.__dict__.update(d)
        with torch.no_grad():
            for p, rg, grad, value in self.tensors:
                if value is not None:
                    p.copy_(value)
                if p.requires_grad != rg:
                    p.requires_grad_(rg)
                p.grad = grad


def deepcopy_model(model: nn.Module, who: str = "compress.prune", action: str = "prune") -> nn.Module:
    """`copy.deepcopy(model)`, or an error that says why not and what to do (`who` works on a copy)."""
    try:
        return copy.deepcopy(model)
    except Exception as e:  # locks, open files, generators, C handles...
        raise TypeError(f"{who} works on a copy, but {type(model).__name__} cannot be deep-copied "
                        f"({type(e).__name__}: {e}); pass inplace=True to {action} the model itself, or remove "
                        "the attribute that cannot be copied") from e


def resolve_name(names: Iterable[str], name: str, what: str) -> str:
    """`name` if it is a module of the model, else a ValueError with the closest names."""
    names = list(names)
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"{what} names module {name!r}, which is not in the model{hint} "
                     "(names are those of model.named_modules())")
