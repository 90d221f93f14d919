"""The `Forecaster` contract and the adapter registry.

Every criterion, strategy, report and benchmark works on one shape of model: an
`nn.Module` whose `forward(past[B, L, C]) -> forecast[B, H, C]` gives a point forecast.
An adapter wraps a family's real model (the library's own class, or one written here
from the paper) so that everything architecture-specific lives in exactly one file under
`compress/models/`, registered with `@register("name")`.
"""
from __future__ import annotations

import os
from typing import Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["Forecaster", "PruningHooks", "pruning_hooks", "register", "available", "status", "load", "get_adapter",
           "build_record", "check_config_keys"]

_REGISTRY: Dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Register a `Forecaster` subclass under `name` (one line per family).

    Example:
        >>> @register("toy")                                   # doctest: +SKIP
        ... class Toy(Forecaster): ...
    """

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_adapters() -> None:
    # Adapter files register themselves on import; each imports its model package lazily
    # inside `build`, so importing them here stays cheap.
    from . import _zoo  # noqa: F401


def available(installed_only: bool = False) -> List[str]:
    """Names of the registered model families.

    Args:
        installed_only: only the families whose packages are installed here (checked
            without importing them); `status()` says what the others miss and how to
            install it.

    Example:
        >>> import compress
        >>> "transformer" in compress.models.available(installed_only=True)   # built in: always
        True
    """
    _import_adapters()
    if not installed_only:
        return sorted(_REGISTRY)
    from .packages import installed

    return sorted(n for n, cls in _REGISTRY.items() if all(installed(m) for m in cls.requires))


def status() -> Dict[str, "object"]:
    """`{family: FamilyStatus(installed, requires, missing, install)}` for every family.

    Example:
        >>> import compress
        >>> compress.models.status()["transformer"].installed
        True
    """
    from .packages import status as _status

    return _status()


def get_adapter(name: str) -> type:
    _import_adapters()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def load(name, pretrained: Optional[str] = None, size: str = "small", *, allow_pickle: bool = False,
         verbose: bool = False, **config) -> "Forecaster":
    """Build a forecaster by family name, or load one saved with `Forecaster.save(dir)`.

    A registered family name always means the family, even if a directory of that name
    exists in the working directory: load such a directory as ``"./transformer"``.
    Whatever the source, the model comes back in eval mode (dropout off; call `.train()`
    to train it). The model libraries' progress bars and info logs are held back during the
    load (warnings still show); `verbose=True` lets them through. A family whose package is
    not installed raises `compress.models.packages.MissingPackageError`, which names the
    package and the command that installs it (`status()` says what is installed).

    Args:
        name: a family from `available()`, or a directory written by `Forecaster.save`.
        pretrained: local path to the family's pretrained weights (never a hub id: nothing
            is downloaded at run time).
        size: "tiny" (builds and runs in well under a second, for tests) or "small" (the
            reference configuration of the family).
        allow_pickle: also read directories saved in the old pickled layout (runs code
            from the file; warns). See `compress.models.saving.convert_legacy`.
        verbose: show the model libraries' own progress bars and info logs.
        **config: overrides of the family's configuration (context_length, horizon, ...);
            unknown keys are an error.

    Example:
        >>> m = compress.models.load("transformer", size="tiny")   # doctest: +SKIP
        >>> m(torch.randn(2, m.context_length, 7)).shape            # doctest: +SKIP
    """
    from . import saving

    path = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(path, str):
        raise TypeError(f"load() takes a family name or a directory, got {type(name).__name__}")
    _import_adapters()
    is_family = path in _REGISTRY and not isinstance(name, os.PathLike)
    if not is_family and (os.path.isdir(path) or os.sep in path or (os.altsep and os.altsep in path)):
        if pretrained is not None or config:
            raise ValueError(f"{path!r} is a saved model: it takes no pretrained= or config overrides "
                             f"(got {sorted(config) + (['pretrained'] if pretrained is not None else [])})")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no saved model at {path!r} (no such directory)")
        return saving.load(path, allow_pickle=allow_pickle, verbose=verbose)
    cls = get_adapter(path)
    return build_quietly(cls, verbose, pretrained=pretrained, size=size, **config)


def build_quietly(cls, verbose: bool = False, build: Optional[Callable] = None, **kw) -> "Forecaster":
    """`cls.build(**kw)` (or `build(**kw)`) in eval mode, without the libraries' set-up noise
    (`compress.models._quiet`) unless `verbose`, and with a `MissingPackageError` naming the
    package and its install command when the family's package is not installed."""
    import contextlib

    from ._quiet import quiet_loading
    from .packages import MissingPackageError, check_installed

    check_installed(cls.family, cls.requires)
    try:
        with contextlib.nullcontext() if verbose else quiet_loading(cls.requires):
            model = (build or cls.build)(**kw)
    except ModuleNotFoundError as e:  # a package the family's package imports
        if e.name is None or isinstance(e, MissingPackageError):
            raise
        raise MissingPackageError.of(cls.family, [e.name], cause=f"No module named {e.name!r}") from e
    return model.eval()


def check_config_keys(family: str, given, known, hint: str = "") -> None:
    """Raise ValueError naming every key of `given` not in `known` (with close matches).

    Example:
        >>> check_config_keys("toy", {"d_modle": 8}, {"d_model"})   # doctest: +SKIP
        ValueError: toy: unknown config key 'd_modle' (did you mean 'd_model'?) ...
    """
    import difflib

    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, sorted(known), n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{family}: unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                     f"known: {', '.join(sorted(known))}{hint}")


def build_record(size: str, pretrained: Optional[str], overrides: dict) -> dict:
    """The part of a Forecaster's `config` every adapter records: size, weights path, overrides."""
    return {"size": size, "pretrained": None if pretrained is None else os.path.abspath(pretrained),
            "overrides": overrides}


class PruningHooks:
    """What the pruning engine asks of a model, each with a default.

    `Forecaster` implements this interface (adapters override what their family needs);
    any other `nn.Module` gets it through `pruning_hooks(model)`, which uses the module's
    own methods of these names where it has them and the defaults otherwise. Strategies
    and `compress.prune` call only these methods, never `hasattr` on the model.

    Methods:
        prepare_for_pruning(): called on the copy before it is traced (untie shared
            per-head tables, make frozen position tables visible to tracing...).
        after_prune(): called after a cut (bring config fields in line with the new sizes).
        protected_modules(): modules default pruning leaves dense (input embedding,
            forecasting head); an empty list lets the engine infer them.
        example_inputs(batch_size, n_channels): one input batch for tracing, or None.
    """

    def prepare_for_pruning(self) -> None:
        """Called on the copy before structured pruning traces it (untie shared per-head tables...)."""

    def after_prune(self) -> None:
        """Called after a cut: bring config fields in line with the new sizes."""

    def protected_modules(self) -> List[nn.Module]:
        """Modules default pruning leaves alone (input embedding, forecasting head)."""
        return []

    def example_inputs(self, batch_size: int = 2, n_channels: Optional[int] = None):
        """One input batch for tracing, or None if the model cannot say."""
        return None


class _ModuleHooks(PruningHooks):
    """`PruningHooks` of a plain `nn.Module`: its own methods of these names, else the defaults."""

    def __init__(self, module: nn.Module):
        self.module = module

    def _own(self, name):
        fn = getattr(self.module, name, None)
        return fn if callable(fn) else None

    def prepare_for_pruning(self) -> None:
        fn = self._own("prepare_for_pruning")
        if fn:
            fn()

    def after_prune(self) -> None:
        fn = self._own("after_prune")
        if fn:
            fn()

    def protected_modules(self) -> List[nn.Module]:
        fn = self._own("protected_modules")
        return list(fn() or []) if fn else []

    def example_inputs(self, batch_size: int = 2, n_channels: Optional[int] = None):
        fn = self._own("example_inputs")
        return fn() if fn else None


def last_linear(model: nn.Module) -> List[nn.Module]:
    """`[the last nn.Linear or nn.Conv1d of model]` in registration order ([] if none): the
    forecasting head of a plain module, by convention."""
    found = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    return found[-1:]


def pruning_hooks(model: nn.Module) -> PruningHooks:
    """The `PruningHooks` of `model`: itself for a `Forecaster`, an adapter for any other module.

    Example:
        >>> import torch
        >>> from compress.models.base import pruning_hooks
        >>> pruning_hooks(torch.nn.Linear(2, 2)).protected_modules()
        []
    """
    return model if isinstance(model, PruningHooks) else _ModuleHooks(model)


class Forecaster(PruningHooks, nn.Module):
    """A point forecaster: `forward(past[B, L, C]) -> forecast[B, H, C]`.

    Subclasses implement `build(pretrained, size, **config)` and `_forecast(past)`, and
    may name the modules that default pruning leaves dense (`protected_modules`: the
    input embedding and the forecasting head).

    Attributes:
        context_length: L, the number of past steps the model reads.
        horizon: H, the number of future steps it predicts.
        n_channels: C when the model is built for a fixed channel count, else None.
        model: the family's real model inside.
        config: the (JSON-serialisable) configuration that built it.
    """

    family: ClassVar[str] = "forecaster"
    #: top-level modules the family imports beyond torch (`compress.models.packages` maps them
    #: to distributions); `load` checks them first and names the missing ones
    requires: ClassVar[Tuple[str, ...]] = ()
    CONFIG_FILE: ClassVar[str] = "compress_config.json"  # the description (compress.models.saving)
    WEIGHTS_FILE: ClassVar[str] = "model.safetensors"

    def __init__(self, model: nn.Module, context_length: int, horizon: int,
                 n_channels: Optional[int] = None, config: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.context_length = int(context_length)
        self.horizon = int(horizon)
        self.n_channels = n_channels
        self.config = dict(config or {})

    @classmethod
    def build(cls, pretrained: Optional[str] = None, size: str = "small", **config) -> "Forecaster":
        raise NotImplementedError

    def forward(self, past: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, C]
        if past.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects past values shaped [batch, length, channels], got {tuple(past.shape)}")
        if self.n_channels is not None and past.shape[-1] != self.n_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.n_channels} channels, got {past.shape[-1]}")
        return self._forecast(past)

    def _forecast(self, past: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # prepare_for_pruning, after_prune, protected_modules: see PruningHooks (defaults there)

    def layer_stacks(self) -> list:
        """The lists of removable blocks for depth pruning (`compress.prune(..., strategy="layers")`).

        Returns `compress.strategies.layers.BlockStack`s: the path of each `nn.ModuleList`,
        how many of its blocks must stay, what a skipped block returns (`skip`) and the
        fix-up after removal (`fix`: config counts, tables owned by a removed block).
        Default: every `nn.ModuleList` of identical blocks (`find_block_stacks`); adapters
        override it to name their stacks and update their configs.

        Example:
            >>> [s.path for s in compress.models.load("patchtst", size="tiny").layer_stacks()]  # doctest: +SKIP
            ['model.model.encoder.layers']
        """
        from ..strategies.layers import find_block_stacks

        return find_block_stacks(self)

    def head_modules(self) -> List[nn.Module]:
        """The forecasting head: what `compress.finetune(..., method="linear_probe")` trains.

        `method="lora"` and `"trace"` also train it fully (LoRA never targets modules inside
        it). Default: the last of `protected_modules()` (adapters list the input embedding
        first and the head last), else the last `nn.Linear` / `nn.Conv1d` of the model.
        Families whose head is several modules, or a larger block, override this.

        Example:
            >>> m = compress.models.load("transformer", size="tiny")   # doctest: +SKIP
            >>> m.head_modules() == [m.model.projection]                # doctest: +SKIP
            True
        """
        protected = list(self.protected_modules())
        if protected:
            return protected[-1:]
        return last_linear(self)

    def example_inputs(self, batch_size: int = 2, n_channels: Optional[int] = None) -> torch.Tensor:
        c = self.n_channels or n_channels or 3
        p = next((p for p in self.parameters() if p.is_floating_point()), None)
        kw = {} if p is None else {"dtype": p.dtype, "device": p.device}  # follows .double(), .to(device)
        return torch.randn(batch_size, self.context_length, c, **kw)

    # --- persistence -------------------------------------------------------------
    def sizes(self) -> dict:
        """Current sizes (after pruning) of every Linear / Conv1d and head count."""
        from ..graph import describe_sizes

        return describe_sizes(self)

    def save(self, directory, layouts=()) -> str:
        """Write the model (safetensors weights + a JSON description of its pruned sizes).

        Atomic: a save that fails leaves what was at `directory` before untouched. See
        `compress.models.saving` for the format.

        Args:
            directory: target directory (absent, empty, or a previous save).
            layouts: extra registered layouts to write beside it.

        Example:
            >>> small.save("runs/ttm-pruned"); again = compress.models.load("runs/ttm-pruned")  # doctest: +SKIP
        """
        from . import saving

        return saving.save(self, directory, layouts=layouts)

    def save_pretrained(self, directory, **kw) -> str:
        """Write the model in its family's own ``save_pretrained`` layout (loads without
        compress); see `compress.models.native.save_pretrained` for which prunings allow it.

        Example:
            >>> small.save_pretrained("runs/patchtst-hf")   # doctest: +SKIP
        """
        from .native import save_pretrained

        return save_pretrained(self, directory, **kw)

    def native_config(self):
        """The family library's config with the pruned sizes (FFN widths, head counts, layer
        counts read off the modules), for `save_pretrained`.

        Raises `compress.models.native.NativeLayoutError` where no config of the family can
        describe the model (the default: the family has no such layout).
        """
        from .native import no_native_layout

        raise no_native_layout(self.family)

    def native_state_dict(self) -> dict:
        """The tensors `save_pretrained` writes (default: the inner model's state dict)."""
        return self.model.state_dict()

    @classmethod
    def load_dir(cls, directory, allow_pickle: bool = False) -> "Forecaster":
        """Load a directory written by `save` (eval mode); see `compress.models.load`."""
        from . import saving

        return saving.load(directory, allow_pickle=allow_pickle)

    @classmethod
    def _skeleton(cls, meta: dict) -> "Forecaster":
        """The unpruned architecture a saved model came from, without pretrained files.

        `compress.models.saving.load` then re-applies the saved widths, head counts and
        weights. The default rebuilds from the build record (size and overrides), which
        is exact for families whose architecture those fix; families built from a
        checkpoint's config override this to build from the recorded native config.
        """
        rec = meta.get("config") or {}
        return cls.build(pretrained=None, size=rec.get("size", "small"), **dict(rec.get("overrides") or {}))

    @classmethod
    def from_native(cls, model: nn.Module, meta: dict) -> "Forecaster":
        """Wrap a rebuilt native model with the saved sizes and config (for `_skeleton`)."""
        return cls(model, meta["context_length"], meta["horizon"], n_channels=meta.get("n_channels"),
                   config=meta.get("config"))

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("prepare_for_pruning")
        if own is not None and not getattr(own, "_compress_marks", False):
            def prepare_for_pruning(self, *a, _own=own, **k):
                out = _own(self, *a, **k)
                self.compress_prepared = True  # recorded by save: load re-applies the preparation
                return out
            prepare_for_pruning.__doc__ = own.__doc__
            prepare_for_pruning._compress_marks = True
            cls.prepare_for_pruning = prepare_for_pruning
