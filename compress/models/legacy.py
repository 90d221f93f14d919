"""The pre-0.2 save layout (a pickled ``model.pt``): reading it on request, converting it once.

Why a separate module: reading a pickle runs code from the file, so this path is opt-in
(`compress.models.load(dir, allow_pickle=True)`) and kept apart from `saving`, which reads
and writes only safetensors + JSON. `convert_legacy` and ``python -m compress.models.saving
convert DIR`` rewrite a trusted old directory in the current layout and check that the
weights came through unchanged (both are re-exported by `saving`, where they always were).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from .saving import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, SavedModelError, load, save

__all__ = ["convert_legacy", "main"]


def _load_legacy(directory: str, allow_pickle: bool) -> nn.Module:
    from .base import _import_adapters

    path = os.path.join(directory, LEGACY_WEIGHTS_FILE)
    if not os.path.exists(path):
        raise SavedModelError(f"{directory!r}: no weights ({WEIGHTS_FILE} is missing)")
    if not allow_pickle:
        raise SavedModelError(
            f"{directory!r} was saved by an older compress as a pickle ({LEGACY_WEIGHTS_FILE}); reading it runs code "
            "from the file. If you trust it, convert it once: compress.models.saving.convert_legacy("
            f"{directory!r}) or `python -m compress.models.saving convert {directory}` (or load it with "
            "allow_pickle=True)")
    warnings.warn(f"unpickling {path}: this runs code from the file; do this only for files you trust, and "
                  "convert it with compress.models.saving.convert_legacy", UserWarning, stacklevel=3)
    _import_adapters()
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise SavedModelError(f"{path} could not be unpickled ({type(e).__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise SavedModelError(f"{path} holds a {type(model).__name__}, not a model")
    return model.eval()


def convert_legacy(directory, out=None) -> str:
    """Rewrite a pickled (pre-0.2) save as safetensors + description, and check it.

    Unpickling runs code from the file: convert only directories you trust.

    Args:
        directory: the old directory (``compress_config.json`` + ``model.pt``).
        out: where to write the new save (default: replace `directory`, atomically).

    Returns:
        The new directory.

    Example:
        >>> convert_legacy("runs/old-save", "runs/new-save")   # doctest: +SKIP
    """
    directory = os.fspath(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = _load_legacy(directory, allow_pickle=True)
    target = os.fspath(out) if out is not None else directory
    save(model, target)
    again = load(target)
    a, b = model.state_dict(), again.state_dict()
    if set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a):
        raise SavedModelError(f"converting {directory!r}: the rewritten model differs from the pickled one")
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m compress.models.saving convert OLD_DIR [--out NEW_DIR]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m compress.models.saving",
                                description="Convert pickled compress saves (model.pt) to safetensors + JSON. "
                                            "Unpickling runs code from the file: only for files you trust.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert one or more old directories")
    c.add_argument("directories", nargs="+")
    c.add_argument("--out", help="output directory (one input only; default: replace in place)")
    args = p.parse_args(argv)
    if args.out and len(args.directories) != 1:
        p.error("--out takes exactly one input directory")
    for d in args.directories:
        try:
            print(f"{d} -> {convert_legacy(d, args.out)}")
        except SavedModelError as e:
            print(f"error: {e}")
            return 2
    return 0
