"""Pruned models in their family's own ``save_pretrained`` layout, loadable without compress.

Why this module exists: a model saved with `Forecaster.save` needs compress to be read
back (its description records per-layer widths that the families' configs cannot say).
For the families built on Hugging Face models (PatchTST, TimesFM 2.5, Chronos-Bolt, TTM),
a pruned model whose layers were all cut alike is still an instance of the family's own
architecture at smaller sizes. `save_pretrained` writes it as the family's library does
(``config.json`` with the new sizes + ``model.safetensors``), so that
``transformers.PatchTSTForPrediction.from_pretrained(dir)``, granite-tsfm's
``TinyTimeMixerForPrediction.from_pretrained(dir)``, chronos' ``BaseChronosPipeline
.from_pretrained(dir)`` or ``transformers.TimesFm2_5ModelForPrediction.from_pretrained(dir)``
load it on a machine without compress.

How: each adapter's `Forecaster.native_config()` reads the new sizes off the pruned modules
(FFN widths, head counts, layer counts) into a copy of the family's config, or raises
`NativeLayoutError` saying why no config can describe the model (widths that differ per
layer, PatchTST's head pruning, T5 relative-position tables that differ per layer). The
family's class is then built from that config and must have exactly the pruned model's
tensors (names and shapes), the weights are placed with ``strict=True``, and by default the
written directory is loaded back through the family's own ``from_pretrained`` and its
forecast compared with the pruned model's. A model that fails any step is never written.
Writes are atomic (temporary sibling directory, renamed into place).

Unstructured zeros are kept as they are (dense tensors with zeros); `compress.sparsify`'d
layers are written dense again. ``model.save(dir, layouts=("hf",))`` writes the compress
format and this layout (in ``dir/hf``) together.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from typing import List, Optional

import torch
from torch import nn

__all__ = ["save_pretrained", "native_model", "NativeLayoutError", "uniform", "NATIVE_FILES", "HF_SUBDIR"]

#: what a family's save_pretrained may write (a directory holding only these may be replaced)
NATIVE_FILES = re.compile(r"^(config\.json|generation_config\.json|model\.safetensors(\.index\.json)?|"
                          r"model-\d+-of-\d+\.safetensors)$")
#: where ``Forecaster.save(dir, layouts=("hf",))`` puts the native layout
HF_SUBDIR = "hf"
_KEEP = "keep the compress format (model.save(dir) / compress.models.load(dir)), which stores any pruned shape"


class NativeLayoutError(ValueError):
    """The pruned model has no equivalent in its family's own architecture (or no such layout exists)."""


def uniform(family: str, what: str, widths: dict, field: str, config_name: str, fix: Optional[str] = None) -> int:
    """The one value of `widths` (``{layer name: width}``), or a `NativeLayoutError` that names
    the layers that differ, why the family's config cannot hold them, and `fix` (what to do).

    Example:
        >>> uniform("patchtst", "FFN widths", {"layers.0": 16, "layers.1": 16}, "ffn_dim", "PatchTSTConfig")
        16
    """
    values = sorted(set(widths.values()))
    if len(values) == 1:
        return values[0]
    if not values:
        raise NativeLayoutError(f"{family}: found no {what} to read {config_name}.{field} from")
    shown = ", ".join(f"{k}: {v:g}" for k, v in list(widths.items())[:6]) + (", ..." if len(widths) > 6 else "")
    fix = fix or "Prune with scope='layer' (the same fraction of every layer) to get a save_pretrained layout"
    raise NativeLayoutError(
        f"{family}: the {what} differ ({shown}); {config_name}.{field} is one number for all of them, so the "
        f"family's library cannot build this model. {fix}, or {_KEEP}")


def _plain(model: nn.Module) -> nn.Module:
    from ..export import _densified

    adapted = [n for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]
    if adapted:
        raise NativeLayoutError(f"the model holds unmerged LoRA adapters ({adapted[0]}, ...): merge them first with "
                                "compress.finetune.merge_lora(model)")
    return _densified(model)


def native_model(model: nn.Module) -> nn.Module:
    """The family's own model class at the pruned sizes, holding the pruned weights.

    Args:
        model: a `compress.models.Forecaster` of a family with a native layout.

    Returns:
        A fresh instance of the family's class (``type(model.model)``), eval mode, built
        from `model.native_config()`, with the weights placed strictly.

    Raises:
        NativeLayoutError: the family has no native layout, or the pruned sizes are not
            expressible in its config (the message says why and what to do instead).

    Example:
        >>> hf = native_model(compress.prune(compress.models.load("patchtst", size="tiny"), units=("ffn",)))  # doctest: +SKIP
        >>> type(hf).__name__                                                                                  # doctest: +SKIP
        'PatchTSTForPrediction'
    """
    from ._quiet import quiet_loading
    from .base import Forecaster

    if not isinstance(model, Forecaster):
        raise TypeError(f"save_pretrained needs a compress.models.Forecaster, got {type(model).__name__}")
    model = _plain(model)
    config = model.native_config()
    state = model.native_state_dict()
    cls = type(model.model)
    with quiet_loading(model.requires), torch.random.fork_rng():  # its random init leaves the user's RNG alone
        fresh = cls(config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k}: pruned {have[k]}, {cls.__name__} {want[k]}" for k in sorted(set(want) & set(have))
             if want[k] != have[k]]
    if missing or extra or wrong:
        raise NativeLayoutError(
            f"{model.family}: {cls.__name__} built from the pruned sizes does not have the pruned model's tensors "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, other shapes {wrong[:3]}): the cut is not one its "
            f"config can describe; {_KEEP}")
    fresh.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return fresh.eval()


def _check_target(directory: str) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NativeLayoutError(f"cannot save to {directory!r}: it is a file, not a directory")
    if not os.path.isdir(directory):
        return
    foreign = sorted(e for e in os.listdir(directory) if not NATIVE_FILES.match(e))
    if foreign:
        raise NativeLayoutError(f"cannot write a save_pretrained layout to {directory!r}: it holds {foreign[:5]}, "
                                "which the save would delete; choose a new directory or empty it")


def _wrap(model, native: nn.Module):
    """`model`'s forecaster around `native` (same context, horizon, channels and forecast code)."""
    meta = {"context_length": model.context_length, "horizon": model.horizon, "n_channels": model.n_channels,
            "config": model.config}
    return type(model).from_native(native, meta).eval()


def _compare(model, loaded: nn.Module, directory: str, rtol: float, atol: float) -> None:
    x = model.example_inputs()
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            want, got = model.eval()(x), _wrap(model, loaded)(x)
    finally:
        for m, training in flags:
            m.training = training
    if want.shape != got.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
        diff = (got - want).abs().max().item() if want.shape == got.shape else f"shape {tuple(got.shape)}"
        raise NativeLayoutError(f"{model.family}: the model loaded back from {directory!r} with "
                                f"{type(loaded).__name__}.from_pretrained forecasts differently from the pruned "
                                f"model (max abs diff {diff}); nothing was written. {_KEEP}")


def _write(model, native: nn.Module, target: str, check: bool, rtol: float, atol: float) -> List[str]:
    from ._quiet import quiet_loading

    with quiet_loading(model.requires), torch.random.fork_rng():  # example inputs and inits: not the user's RNG
        native.save_pretrained(target)
        if check:
            loaded = type(native).from_pretrained(target).eval()
            _compare(model, loaded, target, rtol, atol)
    return sorted(os.listdir(target))


def save_pretrained(model: nn.Module, directory, *, check: bool = True, rtol: float = 1e-5,
                    atol: float = 1e-6) -> str:
    """Write a (pruned) forecaster in its family's own ``save_pretrained`` layout.

    The directory holds ``config.json`` (the family's config with the pruned sizes) and
    ``model.safetensors``, and loads without compress through the family's library:

    ========================  =====================================================
    family                    loader
    ========================  =====================================================
    patchtst                  ``transformers.PatchTSTForPrediction.from_pretrained``
    timesfm                   ``transformers.TimesFm2_5ModelForPrediction.from_pretrained``
    chronos_bolt              ``chronos.BaseChronosPipeline.from_pretrained`` (or
                              ``chronos.chronos_bolt.ChronosBoltModelForForecasting``)
    ttm                       ``tsfm_public.TinyTimeMixerForPrediction.from_pretrained``
    ========================  =====================================================

    What allows it: every layer cut alike (``scope="layer"``, the default: FFN widths and
    head counts the same in every layer), depth pruning (the layer count changes) and
    unstructured zeros. Per-layer widths (``scope="global"``, progressive pruning), PatchTST
    head pruning and Chronos-Bolt head pruning have no config in the family's library and
    raise `NativeLayoutError` (the compress format, `Forecaster.save`, keeps them).

    Args:
        model: a `compress.models.Forecaster` of one of the families above.
        directory: the target: absent, empty, or a previous save_pretrained layout.
        check: load the written files back with the family's ``from_pretrained`` and
            require the same forecast as `model` on its example inputs (within
            `rtol` / `atol`) before the directory is put in place.
        rtol, atol: tolerances of the check.

    Returns:
        The directory.

    Raises:
        NativeLayoutError: the family has no such layout, the pruned model is not
            expressible in it, or the check failed; nothing is written then.

    Example:
        >>> small = compress.prune(compress.models.load("patchtst", size="tiny"), ratio=0.5, units=("ffn",))  # doctest: +SKIP
        >>> compress.models.save_pretrained(small, "runs/patchtst-hf")                                         # doctest: +SKIP
        >>> transformers.PatchTSTForPrediction.from_pretrained("runs/patchtst-hf")                             # doctest: +SKIP
    """
    from .saving import move_into_place

    directory = os.fspath(directory).rstrip(os.sep) or os.sep
    _check_target(directory)
    native = native_model(model)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(directory))}.tmp-", dir=parent)
    try:
        _write(model, native, tmp, check, rtol, atol)
        move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _hf_layout(model: nn.Module, tmp_dir: str) -> List[str]:
    """The "hf" layout of `compress.models.saving.save`: the native files in ``tmp_dir/hf``."""
    target = os.path.join(tmp_dir, HF_SUBDIR)
    os.makedirs(target)
    _write(model, native_model(model), target, True, 1e-5, 1e-6)
    return [HF_SUBDIR]


def _register() -> None:
    from .saving import register_layout

    register_layout(HF_SUBDIR, _hf_layout)


_register()


def no_native_layout(family: str, why: Optional[str] = None) -> NativeLayoutError:
    """The error of a family without a save_pretrained layout."""
    return NativeLayoutError(
        f"{family}: no save_pretrained layout" + (f" ({why})" if why else "") + "; families with one: "
        f"patchtst, timesfm, chronos_bolt, ttm. {_KEEP[0].upper() + _KEEP[1:]}")
