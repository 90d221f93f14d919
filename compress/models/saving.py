"""Saved models: safetensors weights plus a JSON description, written atomically.

Why this module exists: `torch.save(model)` pickles whole modules, and reading a pickle
runs whatever code the file names, so opening a model directory someone sent you was
as dangerous as running their script. A saved forecaster is now a directory holding

* ``model.safetensors``: every persistent tensor (tied tensors stored once), no code;
* ``compress_config.json``: the *description* from which `load` rebuilds the pruned
  architecture: the family and its build record, every module's type and scalar
  attributes (widths, head counts, ...), every tensor's shape / dtype / requires_grad,
  tied-tensor aliases, removed blocks and the pruning record.

`load` builds the family's unpruned skeleton (`Forecaster._skeleton`, no pretrained files
needed), re-applies what pruning changed structurally (`prepare_for_pruning`, removed
blocks, module types swapped by the engine), restores the scalar attributes, and then
places the weights after checking every tensor's name, shape and dtype against the
description. Any mismatch is one `SavedModelError` that names the file and the problem.
Reading a pickle (the pre-0.2 ``model.pt`` layout) needs `allow_pickle=True` and warns;
`convert_legacy` (or ``python -m compress.models.saving convert DIR``) rewrites such a
directory once, for files you trust.

Saving writes into a temporary sibling directory and renames it into place, so a save
that fails half-way leaves the previous save untouched.

Extension points (for other engineers):

* **Removed blocks** (depth pruning): set ``model.compress_removed_blocks = {stack: [i,
  ...]}`` (qualified name of an `nn.ModuleList` / `nn.Sequential` -> the *original*
  indices removed from it, ascending). `load` removes the same entries from the skeleton
  before anything else; the description stores it as ``"removed_blocks"``.
* **New module types** (sparse Linear, fused blocks, the engine's MHA drop-in): a module
  whose saved type differs from the skeleton's is rebuilt by a function registered with
  `register_module_type(cls, rebuild)`; ``rebuild(skeleton_module, entry) -> module``
  returns an instance with the right structure (tensor shapes are fixed afterwards from
  the description; ``entry["attrs"]`` holds the saved scalar attributes). Store
  compressed sparse weights as ordinary tensors (values / indices as buffers): every
  dtype safetensors knows is fine (int32/int64 indices included).
* **More layouts** (e.g. a family's native ``save_pretrained`` files): register a writer
  with `register_layout(name, writer)`; ``writer(model, tmp_dir) -> [file names]`` runs
  inside the temporary directory of the atomic save, and the files it lists are recorded
  in the description (``"files"``) so a later save may replace them. The compress layout
  is always written: it is what `load` reads.
* **Format changes**: bump `FORMAT_VERSION` and keep reading the older versions.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["save", "load", "describe", "convert_legacy", "register_module_type", "register_layout",
           "SavedModelError", "DESCRIPTION_FILE", "WEIGHTS_FILE", "LEGACY_WEIGHTS_FILE", "FORMAT", "FORMAT_VERSION"]

FORMAT = "compress.saved-model"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "compress_config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"
_OWN_FILES = (DESCRIPTION_FILE, WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)


class SavedModelError(ValueError):
    """A saved-model directory is missing, incomplete, corrupt or does not match its description."""


# ---------------------------------------------------------------------------------
# Registries
# ---------------------------------------------------------------------------------
_MODULE_TYPES: Dict[str, Callable[[nn.Module, dict], nn.Module]] = {}
_TYPE_NAMES: Dict[type, str] = {}
_LAYOUTS: Dict[str, Callable[[nn.Module, str], List[str]]] = {}


def register_module_type(cls: type, rebuild: Callable[[nn.Module, dict], nn.Module],
                         name: Optional[str] = None) -> None:
    """Teach `load` to rebuild modules of type `cls` that replaced a skeleton module.

    Args:
        cls: the module class a pruning step puts into a model.
        rebuild: ``rebuild(skeleton_module, entry) -> nn.Module``; `entry` is the module's
            description (``{"type": ..., "attrs": {...}}``). Shapes need not be right: they
            are set from the description afterwards.
        name: the stable name stored in descriptions (default ``module.QualName``); give
            one so that moving the class to another file keeps old saves loadable.

    Example:
        >>> register_module_type(SparseLinear, lambda old, entry: SparseLinear.empty_like(old))  # doctest: +SKIP
    """
    key = name or f"{cls.__module__}.{cls.__qualname__}"
    _TYPE_NAMES[cls] = key
    _MODULE_TYPES[key] = rebuild


def register_layout(name: str, writer: Callable[[nn.Module, str], List[str]]) -> None:
    """Register an extra on-disk layout written beside the compress one by `save(layouts=[name])`.

    Example:
        >>> register_layout("hf", lambda model, d: write_hf_files(model, d))  # doctest: +SKIP
    """
    _LAYOUTS[name] = writer


def _type_name(m: nn.Module) -> str:
    t = type(m)
    return _TYPE_NAMES.get(t) or f"{t.__module__}.{t.__qualname__}"


def _builtin_types() -> None:
    # The engine swaps nn.MultiheadAttention for its prunable drop-in before a cut.
    from ..graph import MultiheadAttention

    if MultiheadAttention not in _TYPE_NAMES:
        register_module_type(MultiheadAttention, lambda old, entry: MultiheadAttention.from_torch(old),
                             name="compress.graph.MultiheadAttention")


# ---------------------------------------------------------------------------------
# Description
# ---------------------------------------------------------------------------------
_SCALAR = (bool, int, float, str, type(None))


def _encode(v):
    """JSON form of a scalar attribute, or raise TypeError (tuples kept as tuples)."""
    if isinstance(v, _SCALAR):
        return v
    if isinstance(v, tuple):
        return {"tuple": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    raise TypeError


def _decode(v):
    if isinstance(v, dict) and set(v) == {"tuple"}:
        return tuple(_decode(x) for x in v["tuple"])
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def _attrs(m: nn.Module) -> dict:
    """The public scalar attributes of one module (widths, head counts, flags)."""
    out = {}
    for k, v in vars(m).items():
        if k.startswith("_") or k == "training":
            continue
        try:
            out[k] = _encode(v)
        except TypeError:
            continue
    return out


def _tensors(model: nn.Module):
    """(canonical name -> tensor, alias -> canonical, name -> kind) over persistent tensors."""
    state = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    first: Dict[int, str] = {}
    canonical, aliases, kinds = {}, {}, {}
    for name, t in state.items():
        if id(t) in first:
            aliases[name] = first[id(t)]
            continue
        first[id(t)] = name
        canonical[name] = t
        kinds[name] = "parameter" if id(t) in params else "buffer"
    return canonical, aliases, kinds


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: str) -> torch.dtype:
    d = getattr(torch, name, None)
    if not isinstance(d, torch.dtype):
        raise SavedModelError(f"unknown tensor dtype {name!r} in the description")
    return d


def describe(model: nn.Module) -> dict:
    """The JSON description `save` writes (what `load` needs to rebuild the architecture).

    Example:
        >>> d = describe(compress.models.load("transformer", size="tiny"))   # doctest: +SKIP
        >>> d["family"], d["format_version"]                                 # doctest: +SKIP
        ('transformer', 1)
    """
    from .base import Forecaster

    if not isinstance(model, Forecaster):
        raise TypeError(f"only compress Forecasters can be saved this way, got {type(model).__name__}; "
                        "save a plain module's state_dict with safetensors.torch.save_file")
    adapted = [n for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]
    if adapted:
        raise SavedModelError(f"the model holds unmerged LoRA adapters ({adapted[0]}, ...): merge them first with "
                              "compress.finetune.merge_lora(model) (or fine-tune with merge=True), or keep the adapters "
                              "with torch.save(model.state_dict(), ...)")
    _builtin_types()
    canonical, aliases, kinds = _tensors(model)
    try:
        from ..graph import describe_sizes
        sizes = describe_sizes(model)
    except Exception:  # informative only
        sizes = {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "context_length": model.context_length,
        "horizon": model.horizon,
        "n_channels": model.n_channels,
        "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sizes": sizes,
        "pruning": list(getattr(model, "compress_pruning", [])),
        "prepared": bool(getattr(model, "compress_prepared", False)),
        "removed_blocks": {k: sorted(int(i) for i in v)
                           for k, v in dict(getattr(model, "compress_removed_blocks", {}) or {}).items()},
        "modules": {name: {"type": _type_name(m), "attrs": _attrs(m)} for name, m in model.named_modules()},
        "tensors": {name: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype), "kind": kinds[name],
                           **({"requires_grad": bool(t.requires_grad)} if kinds[name] == "parameter" else {})}
                    for name, t in canonical.items()},
        "tied": aliases,
    }
    json.dumps(meta, default=str)  # fails here, not half-way through a save
    return meta


# ---------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------
def _check_target(directory: str) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise SavedModelError(f"cannot save to {directory!r}: it is a file, not a directory")
    parent = os.path.dirname(os.path.abspath(directory))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise SavedModelError(f"cannot save to {directory!r}: its parent {parent!r} is a file")
    if not os.path.isdir(directory):
        return
    entries = set(os.listdir(directory))
    if not entries:
        return
    if DESCRIPTION_FILE not in entries:
        raise SavedModelError(f"cannot save to {directory!r}: it exists and is not a saved compress model "
                              f"(no {DESCRIPTION_FILE}); choose a new directory or empty it")
    known = set(_OWN_FILES)
    try:
        with open(os.path.join(directory, DESCRIPTION_FILE)) as f:
            known.update(json.load(f).get("files", []))
    except (OSError, ValueError, AttributeError):
        pass
    foreign = sorted(entries - known)
    if foreign:
        raise SavedModelError(f"cannot replace the saved model in {directory!r}: it also holds {foreign}, which a "
                              "save would delete; move them away or save to a new directory")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(model: nn.Module, directory, layouts: Sequence[str] = ()) -> str:
    """Write `model` to `directory` atomically (safetensors weights + JSON description).

    The files are written into a temporary directory beside `directory` and renamed into
    place; if anything fails, what was at `directory` before is left as it was.

    Args:
        model: a `compress.models.Forecaster` (pruned or not).
        directory: the target; it may not exist yet, be empty, or hold a previous save.
        layouts: extra layouts registered with `register_layout` to write beside it.

    Returns:
        The directory.

    Example:
        >>> small.save("runs/ttm-pruned"); again = compress.models.load("runs/ttm-pruned")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    directory = os.fspath(directory).rstrip(os.sep) or os.sep
    _check_target(directory)
    from . import native  # noqa: F401  (registers the "hf" layout)

    for name in layouts:
        if name not in _LAYOUTS:
            raise ValueError(f"unknown save layout {name!r}; registered: {sorted(_LAYOUTS) or 'none'}")
    meta = describe(model)
    canonical, _, _ = _tensors(model)
    storages, tensors = set(), {}
    for name, t in canonical.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key in storages or not t.is_contiguous() or t.storage_offset() or t.numel() != t.untyped_storage().nbytes() // max(t.element_size(), 1):
            t = t.clone().contiguous()  # safetensors stores each tensor in its own buffer
        storages.add(key)
        tensors[name] = t

    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        files = [DESCRIPTION_FILE, WEIGHTS_FILE]
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": FORMAT})
        for name in layouts:
            files.extend(_LAYOUTS[name](model, tmp))
        meta["files"] = sorted(set(files))
        with open(os.path.join(tmp, DESCRIPTION_FILE), "w") as f:
            json.dump(meta, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, WEIGHTS_FILE), "rb+") as f:
            os.fsync(f.fileno())
        move_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def move_into_place(tmp: str, directory: str) -> None:
    """Rename the finished directory `tmp` to `directory` (a sibling), replacing what was
    there only once the rename succeeded: a failure leaves the old `directory` as it was."""
    _fsync_dir(tmp)
    parent = os.path.dirname(os.path.abspath(directory))
    base = os.path.basename(os.path.abspath(directory))
    old = None
    if os.path.isdir(directory):
        old = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
        os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        if old is not None:
            os.rename(old, directory)
        raise
    _fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------
def _read_description(directory: str) -> dict:
    path = os.path.join(directory, DESCRIPTION_FILE)
    if not os.path.isdir(directory):
        raise SavedModelError(f"{directory!r} is not a directory")
    if not os.path.exists(path):
        raise SavedModelError(f"{directory!r} is not a saved compress model: {DESCRIPTION_FILE} is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise SavedModelError(f"{path} is corrupt ({e}); save the model again") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise SavedModelError(f"{path} is not a compress model description (no 'family')")
    return meta


def _check_weights(directory: str, meta: dict) -> str:
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise SavedModelError(f"{directory!r}: the weights file {WEIGHTS_FILE} is missing")
    if os.path.getsize(path) == 0:
        raise SavedModelError(f"{path} is empty (an interrupted copy or save?); save the model again")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            shapes = {k: list(f.get_slice(k).get_shape()) for k in keys}
    except SafetensorError as e:
        raise SavedModelError(f"{path} is truncated or corrupt ({e}); save the model again") from None
    declared = meta["tensors"]
    missing, extra = sorted(set(declared) - keys), sorted(keys - set(declared))
    if missing or extra:
        raise SavedModelError(f"{path} does not match {DESCRIPTION_FILE}: missing tensors {missing[:5]}, "
                              f"unexpected tensors {extra[:5]}")
    wrong = [f"{k}: file {shapes[k]}, description {declared[k]['shape']}" for k in sorted(keys)
             if shapes[k] != list(declared[k]["shape"])]
    if wrong:
        raise SavedModelError(f"{path} does not match {DESCRIPTION_FILE}: wrong shapes {wrong[:5]}")
    return path


def _remove_blocks(model: nn.Module, removed: Dict[str, List[int]]) -> None:
    if not removed:
        return
    from ..strategies.layers import remove_saved_blocks

    # stacks the adapter declares are cut by the depth-pruning surgery itself, so their fix-ups
    # (layer counts in the family config, T5's relative-bias table moving to the new first
    # block) happen as they did when the model was pruned
    try:
        if remove_saved_blocks(model, removed):
            return
    except (IndexError, ValueError) as e:
        raise SavedModelError(f"removed_blocks do not fit the rebuilt model: {e}") from None
    for stack, idxs in removed.items():
        try:
            container = model.get_submodule(stack)
        except AttributeError:
            raise SavedModelError(f"the description removes blocks from {stack!r}, which the rebuilt model lacks")
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise SavedModelError(f"removed_blocks names {stack!r}, a {type(container).__name__}, not a ModuleList")
        drop = set(int(i) for i in idxs)
        if any(not 0 <= i < len(container) for i in drop):
            raise SavedModelError(f"removed_blocks of {stack!r} ({sorted(drop)}) are out of range for {len(container)} blocks")
        kept = [m for i, m in enumerate(container) if i not in drop]
        new = nn.ModuleList(kept) if isinstance(container, nn.ModuleList) else nn.Sequential(*kept)
        parent, _, attr = stack.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)


def _apply_modules(model: nn.Module, modules: Dict[str, dict]) -> None:
    for name in sorted(modules, key=lambda n: (n.count(".") + bool(n), n)):
        entry = modules[name]
        try:
            m = model.get_submodule(name) if name else model
        except AttributeError:
            raise SavedModelError(f"the description has module {name!r} ({entry['type']}), which the rebuilt "
                                  f"{type(model).__name__} lacks") from None
        if _type_name(m) != entry["type"]:
            rebuild = _MODULE_TYPES.get(entry["type"])
            if rebuild is None or not name:
                raise SavedModelError(f"module {name!r} is a {entry['type']} in the file but a {_type_name(m)} in the "
                                      "rebuilt model, and no rebuild is registered for it "
                                      "(compress.models.saving.register_module_type)")
            new = rebuild(m, entry)
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            if isinstance(owner, (nn.ModuleList, nn.Sequential)) and attr.isdigit():
                owner[int(attr)] = new
            else:
                setattr(owner, attr, new)
            m = new
        for k, v in entry.get("attrs", {}).items():
            setattr(m, k, _decode(v))
    have = {n for n, _ in model.named_modules()}
    extra = sorted(have - set(modules))
    if extra:
        raise SavedModelError(f"the rebuilt model has modules the description lacks: {extra[:5]}; the file was "
                              "written by a different version of the family adapter")


def _place_tensors(model: nn.Module, meta: dict, path: str) -> None:
    from safetensors import SafetensorError, safe_open

    declared, tied = meta["tensors"], meta.get("tied", {})
    placed = {}
    try:
        with safe_open(path, framework="pt") as f:
            for name, d in declared.items():
                t = f.get_tensor(name)
                if _dtype_name(t.dtype) != d["dtype"]:
                    raise SavedModelError(f"{path}: tensor {name} is {_dtype_name(t.dtype)}, the description says {d['dtype']}")
                owner_name, _, attr = name.rpartition(".")
                try:
                    owner = model.get_submodule(owner_name) if owner_name else model
                except AttributeError:
                    raise SavedModelError(f"tensor {name}: the rebuilt model has no module {owner_name!r}") from None
                if d["kind"] == "parameter":
                    if attr not in owner._parameters:
                        raise SavedModelError(f"tensor {name}: {type(owner).__name__} has no parameter {attr!r}")
                    new = nn.Parameter(t, requires_grad=bool(d.get("requires_grad", True)))
                    owner._parameters[attr] = new
                else:
                    if attr not in owner._buffers:
                        raise SavedModelError(f"tensor {name}: {type(owner).__name__} has no buffer {attr!r}")
                    new = t
                    owner._buffers[attr] = new
                placed[name] = new
    except SafetensorError as e:
        raise SavedModelError(f"{path} is truncated or corrupt ({e}); save the model again") from None
    for alias, target in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        store = owner._parameters if attr in owner._parameters else owner._buffers
        store[attr] = placed[target]
    expected = set(declared) | set(tied)
    have = set(model.state_dict().keys())
    if have != expected:
        raise SavedModelError(f"the rebuilt model's tensors differ from the description: missing "
                              f"{sorted(expected - have)[:5]}, not in the file {sorted(have - expected)[:5]}")


def load(directory, allow_pickle: bool = False, verbose: bool = False) -> nn.Module:
    """Rebuild a forecaster saved with `save` (in eval mode).

    Args:
        directory: a directory written by `Forecaster.save`.
        allow_pickle: also read the pre-0.2 pickled layout (``model.pt``); this runs code
            from the file, so only for files you trust. It warns; convert such
            directories once with `convert_legacy`.
        verbose: show the model libraries' progress bars and info logs while rebuilding.

    Returns:
        The forecaster, in eval mode, on the CPU.

    Example:
        >>> again = compress.models.load("runs/ttm-pruned")   # doctest: +SKIP
    """
    from .base import _import_adapters, build_quietly, get_adapter

    directory = os.fspath(directory)
    meta = _read_description(directory)
    if "format" not in meta and os.path.exists(os.path.join(directory, LEGACY_WEIGHTS_FILE)):
        return _load_legacy(directory, allow_pickle)
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise SavedModelError(f"{directory!r}: {DESCRIPTION_FILE} is not a {FORMAT} description")
    if meta["format_version"] > FORMAT_VERSION:
        raise SavedModelError(f"{directory!r} was saved in format version {meta['format_version']}; this compress "
                              f"reads up to {FORMAT_VERSION}: upgrade compress")
    for key in ("modules", "tensors", "config"):
        if not isinstance(meta.get(key), dict):
            raise SavedModelError(f"{directory!r}: {DESCRIPTION_FILE} lacks its {key!r} section")
    path = _check_weights(directory, meta)
    _import_adapters()
    _builtin_types()
    try:
        cls = get_adapter(meta["family"])
    except ValueError as e:
        raise SavedModelError(f"{directory!r}: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_quietly(cls, verbose, build=cls._skeleton, meta=meta)
        if meta.get("prepared"):
            model.prepare_for_pruning()
    _remove_blocks(model, meta.get("removed_blocks") or {})
    _apply_modules(model, meta["modules"])
    _place_tensors(model, meta, path)
    model.config = dict(meta["config"])
    if meta.get("pruning"):
        model.compress_pruning = list(meta["pruning"])
    if meta.get("removed_blocks"):
        model.compress_removed_blocks = {k: list(v) for k, v in meta["removed_blocks"].items()}
    return model.eval()


# The pickled (pre-0.2) layout lives in its own module; re-exported here, where it always was.
from .legacy import _load_legacy, convert_legacy, main  # noqa: E402  (needs the names above)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
