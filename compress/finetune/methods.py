"""What `compress.finetune(..., method=...)` trains: a registry of fine-tuning methods.

Why this module exists: the training loop (`trainer.finetune`) is the same for every
method; what differs is which parameters train and what happens to the model before and
after. Each method is a function `prepare(model, ctx) -> Prepared` registered by name:

* ``"full"``: every parameter trains (the loop's behaviour before methods existed).
* ``"linear_probe"``: only the forecasting head trains (`lora.head_modules`).
* ``"lora"``: LoRA adapters (peft) on the attention / FFN Linears, plus the head;
  `merge=True` folds them into the weights at the end.
* ``"trace"``: TRACE (arXiv 2503.16991): LoRA + Gated DSIC selection of the modules
  (`trace.select_modules`) + the reconstructed forecasting head
  (`compress.finetune.heads`) where the backbone supports it.

`head="reconstructed"` gives the reconstructed head to any method (e.g. "lora + head").
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

from torch import nn

from .lora import LoraSettings, add_lora, head_modules, merge_lora

__all__ = ["Prepared", "register_method", "methods", "prepare", "trainable_count"]


@dataclass
class Prepared:
    """A model ready for the loop, and what to do once training ends."""

    model: nn.Module
    finish: Callable[[nn.Module], nn.Module] = lambda m: m
    info: dict = field(default_factory=dict)


@dataclass
class Context:
    """Everything a method may use: the data, the loop settings and the method's options."""

    train: object
    val: object
    cfg: object  # FinetuneConfig
    loss_fn: Callable
    lora: LoraSettings
    merge: bool = True
    head: Optional[str] = None  # None (method default), "keep" or "reconstructed"
    horizon: Optional[int] = None
    head_options: dict = field(default_factory=dict)
    trace: object = None  # TraceConfig


_METHODS: Dict[str, Callable[[nn.Module, Context], Prepared]] = {}


def register_method(name: str):
    """Register `prepare(model, ctx) -> Prepared` as `compress.finetune(..., method=name)`."""

    def deco(fn):
        _METHODS[name] = fn
        return fn

    return deco


def methods() -> List[str]:
    """Names of the registered fine-tuning methods."""
    return sorted(_METHODS)


def prepare(name: str, model: nn.Module, ctx: Context) -> Prepared:
    if name not in _METHODS:
        raise ValueError(f"finetune: unknown method {name!r}; choose one of {', '.join(methods())}")
    if ctx.head not in (None, "keep", "reconstructed"):
        raise ValueError(f"finetune: head={ctx.head!r}: choose 'keep' or 'reconstructed' (None: the method's default)")
    if ctx.horizon is not None and ctx.head != "reconstructed" and not (name == "trace" and ctx.head is None):
        raise ValueError("finetune: horizon= only applies with the reconstructed head (head='reconstructed' or "
                         "method='trace'); other heads keep the model's horizon")
    out = _METHODS[name](model, ctx)
    out.info = {"method": name, **out.info, "trainable_params": trainable_count(out.model),
                "params": sum(p.numel() for p in _unique(out.model))}
    return out


def _unique(model: nn.Module):
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def trainable_count(model: nn.Module) -> int:
    """Parameter entries that require grad (tied counted once)."""
    return sum(p.numel() for p in _unique(model) if p.requires_grad)


def _flags(model: nn.Module) -> Dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _restore(model: nn.Module, flags: Dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, True))  # new parameters (a new head) stay trainable


def _attach_head(model: nn.Module, ctx: Context, required: bool) -> bool:
    """Swap in the reconstructed head (compress.finetune.heads); False where unsupported."""
    try:
        from . import heads
    except ImportError as e:
        if required:
            raise ImportError("finetune: the reconstructed head (compress.finetune.heads) is not available") from e
        warnings.warn("compress.finetune.heads is not available: keeping the model's head", stacklevel=4)
        return False
    if not heads.supports_reconstructed_head(model):
        if required:
            heads.attach_reconstructed_head(model, horizon=ctx.horizon, inplace=True, **ctx.head_options)  # raises
        warnings.warn(f"finetune(method='trace'): {type(model).__name__} has no patch-based backbone for the "
                      "reconstructed head; running Gated DSIC with the model's own head", stacklevel=4)
        return False
    # in place: `finetune` already works on its own copy unless the caller passed inplace=True
    heads.attach_reconstructed_head(model, horizon=ctx.horizon, inplace=True, **ctx.head_options)
    return True


def _only_head(model: nn.Module) -> List[nn.Module]:
    head = head_modules(model)
    if not head or not any(True for h in head for _ in h.parameters()):
        raise ValueError(f"finetune: found no forecasting head with parameters in {type(model).__name__}; "
                         "give the model a head_modules() method returning its head modules")
    for h in head:
        for p in h.parameters():
            p.requires_grad_(True)
    return head


@register_method("full")
def _full(model: nn.Module, ctx: Context) -> Prepared:
    info = {}
    if ctx.head == "reconstructed":
        info["head"] = "reconstructed" if _attach_head(model, ctx, required=True) else "kept"
    return Prepared(model, info=info)


@register_method("linear_probe")
def _linear_probe(model: nn.Module, ctx: Context) -> Prepared:
    flags = _flags(model)
    info = {"head": "kept"}
    if ctx.head == "reconstructed" and _attach_head(model, ctx, required=True):
        info["head"] = "reconstructed"
    for p in model.parameters():
        p.requires_grad_(False)
    _only_head(model)

    def finish(m):
        _restore(m, flags)
        return m

    return Prepared(model, finish, info)


def _lora_prepare(model: nn.Module, ctx: Context, *, reconstructed: bool, required: bool) -> Prepared:
    flags = _flags(model)
    info = {"head": "kept"}
    if reconstructed and _attach_head(model, ctx, required=required):
        info["head"] = "reconstructed"
    names = add_lora(model, ctx.lora)  # freezes everything but the adapters
    _only_head(model)
    info.update(lora={**asdict(ctx.lora), "targets": list(ctx.lora.targets) if ctx.lora.targets else None,
                      "modules": len(names)}, merged=ctx.merge)

    def finish(m):
        if ctx.merge:
            merge_lora(m)
            _restore(m, flags)
        return m

    return Prepared(model, finish, info)


@register_method("lora")
def _lora(model: nn.Module, ctx: Context) -> Prepared:
    return _lora_prepare(model, ctx, reconstructed=ctx.head == "reconstructed", required=True)


@register_method("trace")
def _trace(model: nn.Module, ctx: Context) -> Prepared:
    from .trace import TraceConfig, select_modules
    from .trainer import _batches, _eval_batches

    tcfg = ctx.trace if ctx.trace is not None else TraceConfig()
    if isinstance(tcfg, dict):
        tcfg = TraceConfig(**tcfg)
    out = _lora_prepare(model, ctx, reconstructed=ctx.head != "keep", required=ctx.head == "reconstructed")
    cfg = ctx.cfg
    epoch = [0]

    def train_batches():
        epoch[0] += 1
        return _batches(ctx.train, cfg.batch_size, True, cfg.seed + 1000 + epoch[0], cfg.max_train_batches)

    val = list(_eval_batches(ctx.val, cfg.batch_size, tcfg.score_batches))
    record = select_modules(model, train_batches, val, tcfg, lr=cfg.lr, loss_fn=ctx.loss_fn, seed=cfg.seed,
                            progress=cfg.progress)
    out.info["trace"] = record
    out.info["lora"]["modules"] = record["modules_after"]
    return out
