"""LoRA adapters on any forecaster, through the `peft` library.

Why this module exists: `compress.finetune(..., method="lora" | "trace")` needs three things
peft gives on any `nn.Module` (`peft.inject_adapter_in_model(LoraConfig(...), model)`),
plus what peft cannot know about our models: which modules to adapt in each family
(`DEFAULT_TARGETS`), a clear error when a pattern matches nothing, and turning the adapted
layers back into plain `nn.Linear` / `nn.Conv1d` (`merge_lora`) so that a pruned and
LoRA-tuned model saves, loads and measures like any other (`compress.models.saving`).

Targets are resolved here to full module names (and passed to peft as that exact list), so
what is adapted is exactly what `resolve_targets` reports. A pattern matches a module name
when it is the name, a dotted suffix of it (``"q_proj"`` matches
``"...self_attn.q_proj"``), or a regular expression that matches the whole name
(``r".*layers\\.0\\..*_proj"``). Only `nn.Linear` and `nn.Conv1d` leaves are adapted:

* `nn.MultiheadAttention` keeps q/k/v fused in one parameter; swap it for the prunable
  drop-in first (`compress.graph.swap_torch_mha(model)`, what structured pruning does
  anyway), whose q/k/v/out are Linears.
* the Conv1d FFNs of the classic forecasters (kernel 1) are adapted as peft's
  `lora.Conv1d`, and merge back into a plain `nn.Conv1d`.
* modules inside the forecasting head (`head_modules`) are never adapted by default: the
  head trains fully.

Example:
    >>> import compress
    >>> from compress.finetune.lora import resolve_targets
    >>> m = compress.models.load("patchtst", size="tiny")
    >>> sorted({n.rsplit(".", 1)[-1] for n in resolve_targets(m)})
    ['0', '3', 'k_proj', 'out_proj', 'q_proj', 'v_proj']
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from torch import nn

__all__ = ["LoraSettings", "DEFAULT_TARGETS", "default_targets", "resolve_targets", "add_lora", "lora_layers",
           "merge_lora", "remove_lora", "head_modules"]

_ADAPTER = "default"  # peft's adapter name

#: default target patterns per model family: attention q/k/v/o and FFN Linears (or Conv1d)
_CLASSIC = [r".*attention\.(query|key|value|out)_projection", r".*\.conv[12]"]  # conv1/conv2: the kernel-1 FFN
DEFAULT_TARGETS: Dict[str, List[str]] = {
    "transformer": _CLASSIC,
    "informer": _CLASSIC,
    "autoformer": _CLASSIC,
    "fedformer": _CLASSIC,
    "crossformer": [r".*\.(query|key|value|out)_projection", r".*\.MLP[12]\.[02]"],
    "patchtst": [r".*self_attn\.(q|k|v|out)_proj", r".*\.ff\.(0|3)"],
    "ttm": [r".*\.mlp\.fc[12]"],  # TTM has no attention: its MLP-mixer Linears
    "moment": [r".*SelfAttention\.[qkvo]", r".*DenseReluDense\.(wi|wi_0|wi_1|wo)"],
    "chronos_bolt": [r".*(SelfAttention|EncDecAttention)\.[qkvo]", r".*DenseReluDense\.(wi|wi_0|wi_1|wo)"],
    "timesfm": [r".*layers\.\d+\.self_attn\.[qkvo]_proj", r".*layers\.\d+\.mlp\.fc[12]"],
    "moirai": [r".*self_attn\.(q|k|v|out)_proj", r".*ffn\.(fc1|fc2|fc_gate)"],
}
#: for any other module: common attention / FFN names
GENERIC_TARGETS = [r".*(^|\.)(q|k|v|o|query|key|value|out|qkv)(_proj|_projection)?", r".*(^|\.)(fc1|fc2|fc_gate|wi|wi_0|wi_1|wo)",
                   r".*(^|\.)(linear1|linear2|conv1|conv2)"]
_ADAPTABLE = (nn.Linear, nn.Conv1d)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters.

    Args:
        rank: r, the rank of each update `B @ A` (default 8).
        alpha: the update is scaled by `alpha / rank` (default 16).
        dropout: dropout on the adapter's input during training (default 0).
        targets: module names or patterns to adapt (see the module docstring); None:
            `default_targets(model)`.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Optional[Sequence[str]] = None

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"finetune: rank={self.rank!r} must be a positive integer")
        if not self.alpha > 0:
            raise ValueError(f"finetune: alpha={self.alpha!r} must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"finetune: dropout={self.dropout!r} must be in [0, 1)")
        if isinstance(self.targets, str):
            self.targets = [self.targets]


def head_modules(model: nn.Module) -> List[nn.Module]:
    """The forecasting head of `model`: `Forecaster.head_modules()`, else the module's own
    `head_modules()` method, else its last `nn.Linear` / `nn.Conv1d`."""
    from ..models.base import last_linear

    fn = getattr(model, "head_modules", None)
    return list(fn()) if callable(fn) else last_linear(model)


def _in_head(model: nn.Module) -> set:
    """Names of every module inside the head (the head modules included)."""
    ids = {id(m) for h in head_modules(model) for m in h.modules()}
    return {n for n, m in model.named_modules() if id(m) in ids}


def default_targets(model: nn.Module) -> List[str]:
    """The default target patterns for `model`: `DEFAULT_TARGETS[family]`, else `GENERIC_TARGETS`."""
    return list(DEFAULT_TARGETS.get(getattr(model, "family", None), GENERIC_TARGETS))


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def resolve_targets(model: nn.Module, targets: Optional[Iterable[str]] = None) -> List[str]:
    """Full names of the modules LoRA adapts in `model` for `targets` (None: the defaults).

    With the defaults, modules inside the forecasting head are left out (the head trains
    fully). Every pattern given explicitly must match at least one adaptable module.

    Raises:
        ValueError: a pattern matches no module, or only modules LoRA cannot adapt here
            (named with their types and the fix).
    """
    explicit = targets is not None
    patterns = list(default_targets(model) if targets is None else ([targets] if isinstance(targets, str) else targets))
    if not patterns:
        raise ValueError("finetune: targets=[] adapts nothing; pass module names or patterns, or None for the defaults")
    skip = set() if explicit else _in_head(model)
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen, problems = [], []
    for p in patterns:
        hits = [(n, m) for n, m in named if _matches(p, n)]
        ok = [n for n, m in hits if isinstance(m, _ADAPTABLE) and n not in skip]
        if explicit and not ok:
            if hits:
                kinds = sorted({type(m).__name__ for _, m in hits})
                hint = (" (nn.MultiheadAttention: call compress.graph.swap_torch_mha(model) first, then target "
                        "q_proj/k_proj/v_proj/out_proj)" if "MultiheadAttention" in kinds else "")
                problems.append(f"{p!r} matches only {', '.join(kinds)} modules, not nn.Linear / nn.Conv1d{hint}")
            else:
                problems.append(f"{p!r} matches no module")
        chosen += [n for n in ok if n not in chosen]
    if problems:
        linear = [n for n, m in named if isinstance(m, _ADAPTABLE)]
        raise ValueError("finetune: LoRA targets: " + "; ".join(problems) + ". Adaptable modules are e.g. "
                         + ", ".join(linear[:8]) + (" ..." if len(linear) > 8 else ""))
    if not chosen:
        raise ValueError(f"finetune: the default LoRA targets {patterns} match no nn.Linear / nn.Conv1d of this "
                         f"{type(model).__name__}; pass targets=[...] (module names or patterns)")
    return chosen


def add_lora(model: nn.Module, settings: LoraSettings) -> List[str]:
    """Inject LoRA adapters into `model` in place (peft); returns the adapted module names.

    peft freezes every parameter that is not an adapter; callers unfreeze what else should
    train (the head).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - pinned in setup.cfg
        raise ImportError("method='lora'/'trace' needs peft: pip install 'compress-tsfm[peft]' (or 'peft==0.21.2', the tested version)") from e
    names = resolve_targets(model, settings.targets)
    cfg = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=names, bias="none")
    inject_adapter_in_model(cfg, model, adapter_name=_ADAPTER)
    return names


def lora_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """{name: peft LoRA layer} of every adapted module in `model`."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def remove_lora(model: nn.Module, names: Iterable[str]) -> None:
    """Take the adapters of `names` out of `model` (the base layers return, unchanged):
    removed, not zeroed, so they cost nothing and hold no parameters."""
    layers = lora_layers(model)
    for n in names:
        _replace(model, n, layers[n].get_base_layer())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (peft's merge) and put the plain
    `nn.Linear` / `nn.Conv1d` back in place: same outputs (to float rounding), no adapters.

    Use it on a model tuned with `merge=False` before `save`.

    Example:
        >>> tuned = compress.finetune(m, train, val, method="lora", merge=False)  # doctest: +SKIP
        >>> compress.finetune.merge_lora(tuned).save("runs/tuned")               # doctest: +SKIP
    """
    for n, layer in lora_layers(model).items():
        layer.merge(safe_merge=True)
        _replace(model, n, layer.get_base_layer())
    return model
