"""Depth pruning: whole blocks are removed from their layer lists (`strategy="layers"`).

The method of the few-layer-dominance paper (Qiu et al., arXiv 2511.07237): in
time-series Transformers only a few blocks matter, so score every block on calibration
windows (criterion `dominance`), keep the dominant ones and remove the rest physically,
then realign with a short fine-tune (`compress.finetune`). torch-pruning has no layer
removal, so the surgery is written here; it is small: a block list is an `nn.ModuleList`
whose entries each map the hidden state to one of the same shape, so removing entries
leaves a working model, and what refers to the count (config fields such as
`num_hidden_layers`, T5's relative-bias owner, per-layer tables) is fixed by the stack's
`fix` callback, which the model's adapter provides (`Forecaster.layer_stacks()`).

A plain `nn.Module` works without an adapter: every `nn.ModuleList` of two or more blocks
of one class with identical parameter shapes is a stack (`find_block_stacks`); a stack
whose blocks change the hidden-state shape is refused when it is scored.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..graph.kinds import UnitKind, get_kind, register_kind
from .base import PruneConfig, PruneContext, Strategy, checked_scores, register

__all__ = ["BlockStack", "LayersConfig", "find_block_stacks", "resolve_stacks", "model_stacks", "remove_blocks",
           "remove_saved_blocks", "Layers"]


@dataclass
class BlockStack:
    """One list of removable blocks (`nn.ModuleList`) inside a model.

    Args:
        path: qualified name of the `nn.ModuleList` in the model (`model.named_modules()`).
        min_keep: blocks that must stay in this list (0: the list may be emptied, for lists
            whose empty loop is the identity).
        skip: `skip(output, hidden_in) -> output` that a skipped block returns, when
            "its input in place of its first output tensor" is not right (a decoder layer
            that also returns a trend or a per-layer prediction: return zeros for those).
        fix: `fix(model, old_blocks, kept)` called after the list lost blocks: `old_blocks`
            the blocks before, `kept` the positions (in `old_blocks`) that stayed. Update
            config counts, move tables owned by a removed block.

    Example:
        >>> BlockStack("model.encoder.layers", min_keep=1)
        BlockStack(path='model.encoder.layers', min_keep=1)
    """

    path: str
    min_keep: int = 1
    skip: Optional[Callable] = field(default=None, repr=False)
    fix: Optional[Callable] = field(default=None, repr=False)
    blocks: Optional[nn.ModuleList] = field(default=None, repr=False, compare=False)
    kind: ClassVar[str] = "layers"

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("BlockStack.path must name an nn.ModuleList of the model")
        if not isinstance(self.min_keep, int) or self.min_keep < 0:
            raise ValueError(f"BlockStack.min_keep={self.min_keep!r} must be an integer >= 0")

    @property
    def name(self) -> str:
        return self.path

    @property
    def n(self) -> int:
        return len(self.blocks) if self.blocks is not None else 0


def _signature(m: nn.Module) -> tuple:
    return (type(m),) + tuple((k, tuple(v.shape)) for k, v in m.state_dict().items())


def find_block_stacks(model: nn.Module) -> List[BlockStack]:
    """Every `nn.ModuleList` of >= 2 blocks of one class with identical parameter shapes
    (outermost first; lists inside a found block are left to that block).

    Example:
        >>> enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 3,
        ...                                   enable_nested_tensor=False)
        >>> [s.path for s in find_block_stacks(enc)]
        ['layers']
    """
    stacks: List[BlockStack] = []
    taken: List[str] = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2:
            continue
        if any(name.startswith(t + ".") for t in taken):
            continue
        sigs = {_signature(b) for b in m}
        if len(sigs) == 1 and any(True for _ in m[0].parameters()):
            stacks.append(BlockStack(name))
            taken.append(name)
    return stacks


def resolve_stacks(model: nn.Module, stacks: Sequence[BlockStack]) -> List[BlockStack]:
    """Attach each stack's `nn.ModuleList` (`stack.blocks`); clear errors for wrong paths."""
    mods = dict(model.named_modules())
    out = []
    for s in stacks:
        if not isinstance(s, BlockStack):
            raise TypeError(f"layer_stacks() must return BlockStack objects, got {type(s).__name__}")
        m = mods.get(s.path)
        if not isinstance(m, nn.ModuleList):
            raise ValueError(f"layer stack {s.path!r} is not an nn.ModuleList of the model "
                             f"(found {type(m).__name__ if m is not None else 'nothing'})")
        s.blocks = m
        out.append(s)
    return out


def model_stacks(model: nn.Module) -> List[BlockStack]:
    """The model's removable block lists: its adapter's `layer_stacks()`, or found."""
    fn = getattr(model, "layer_stacks", None)
    stacks = fn() if callable(fn) else find_block_stacks(model)
    return resolve_stacks(model, stacks)


def remove_blocks(model: nn.Module, stack: BlockStack, remove: Sequence[int]) -> List[int]:
    """Physically remove blocks `remove` (positions) from `stack`; returns the kept positions.

    The list is replaced by a new `nn.ModuleList` of the kept blocks, `layer_idx` attributes
    inside them are renumbered (Hugging Face caches index by them), every block remembers its
    original position (`compress_block_index`) and the stack's `fix` runs.
    """
    old = list(stack.blocks)
    remove = sorted(set(int(i) for i in remove))
    if any(not 0 <= i < len(old) for i in remove):
        raise IndexError(f"{stack.path}: block positions {remove} out of range (0..{len(old) - 1})")
    kept = [i for i in range(len(old)) if i not in remove]
    if len(kept) < stack.min_keep:
        raise ValueError(f"{stack.path}: keeping {len(kept)} blocks, fewer than its min_keep={stack.min_keep}")
    for i, b in enumerate(old):
        if not hasattr(b, "compress_block_index"):
            b.compress_block_index = i
    parent_name, _, attr = stack.path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.ModuleList([old[i] for i in kept])
    setattr(parent, attr, new)
    for pos, b in enumerate(new):
        for sub in b.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = pos
    stack.blocks = new
    if stack.fix is not None:
        stack.fix(model, old, kept)
    return kept


def remove_saved_blocks(model: nn.Module, removed: Dict[str, List[int]]) -> bool:
    """Re-apply a saved depth pruning to an unpruned skeleton (`compress.models.saving.load`).

    `removed` maps stack paths to the original indices removed. Stacks the model declares
    (`layer_stacks()`) are cut with `remove_blocks`, so their `fix` runs (config counts,
    T5's relative-bias table moves to the new first block) exactly as when the model was
    pruned. Returns False if some path is not a declared stack (the caller then removes
    those entries plainly).
    """
    try:
        stacks = {s.path: s for s in model_stacks(model)}
    except Exception:  # a model whose stacks cannot be listed: plain removal
        return False
    if not set(removed) <= set(stacks):
        return False
    for path, idxs in removed.items():
        remove_blocks(model, stacks[path], idxs)
    return True


@register_kind
class Layers(UnitKind):
    """Whole blocks of a block list (depth pruning), as a registered unit kind.

    Its units are `BlockStack`s found on the model (`stacks`: the adapter's
    `layer_stacks()`, or every list of identical blocks), not channel groups of the traced
    graph, so it is opt-in and `find` lists nothing for the width strategies; a block is
    "masked" by skipping it (`dominance` scores), cut with `remove_blocks`, and its
    stack's `fix` fixes up the configs (`cut_blocks`).
    """

    name = "layers"
    opt_in = True
    label = "layers"

    def find(self, ctx):
        raise ValueError('units=("layers",) are whole blocks: prune them with strategy="layers"')

    def stacks(self, model: nn.Module) -> List[BlockStack]:
        return model_stacks(model)

    def cut_blocks(self, model: nn.Module, stack: BlockStack, idxs: Sequence[int]) -> List[int]:
        return remove_blocks(model, stack, idxs)


@dataclass
class LayersConfig:
    """Settings of the `layers` strategy (`compress.prune(..., options={...})`).

    Args:
        keep: None (remove `ratio` of the blocks), an int (keep this many blocks in all), or
            "auto" (keep the fewest blocks whose removal-set keeps the loss within
            `tolerance`; `ratio` is then the largest share that may be removed).
        select: "score" (remove the lowest-scored blocks, ranked across stacks; with
            `dominance(measure="angular")` the n consecutive blocks that move the hidden
            state least, per stack), "first" or "last" (remove the first / last blocks of
            each stack: the positional baselines).
        tolerance: for keep="auto", the relative loss increase allowed (0.10 = 10 %).
        min_keep: at least this many blocks stay in the model overall (1).
    """

    keep: Optional[object] = None
    select: str = "score"
    tolerance: float = 0.10
    min_keep: int = 1

    def __post_init__(self):
        if not (self.keep is None or self.keep == "auto" or (isinstance(self.keep, int) and not isinstance(self.keep, bool)
                                                             and self.keep >= 1)):
            raise ValueError(f"layers: keep={self.keep!r} must be None, a positive int or 'auto'")
        if self.select not in ("score", "first", "last"):
            raise ValueError(f"layers: select={self.select!r} must be 'score', 'first' or 'last'")
        if not (isinstance(self.tolerance, (int, float)) and 0.0 <= self.tolerance and math.isfinite(self.tolerance)):
            raise ValueError(f"layers: tolerance={self.tolerance!r} must be a number >= 0")
        if not isinstance(self.min_keep, int) or self.min_keep < 1:
            raise ValueError(f"layers: min_keep={self.min_keep!r} must be a positive integer")


@register
class Layers(Strategy):
    """Remove whole blocks (depth pruning), chosen by a block criterion or by position.

    `ratio` is the share of all removable blocks to remove (rounded to the nearest count);
    `options={"keep": "auto"}` picks the count itself: it scores the blocks, then for
    k = 1, 2, ... skips the k blocks it would remove (hooks, nothing cut yet) and measures
    the loss on `validation` (or the calibration windows); it keeps the largest k whose
    loss is within `tolerance` (10 %) of the full model's. Why this rule: the claim to
    serve is "keep few blocks at no loss", and the loss with the blocks skipped is what the
    removal will really give before realignment; a score-mass threshold does not know how
    flat the loss is, and the dominance scores of different models are on different scales.

    Example:
        >>> import torch, compress
        >>> enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 4,
        ...                                   enable_nested_tensor=False)
        >>> cal = [(torch.randn(4, 5, 8), torch.randn(4, 5, 8))]
        >>> small = compress.prune(enc, "dominance", ratio=0.5, strategy="layers", calibration=cal)
        >>> len(small.layers), small.compress_pruning[-1]["blocks_before"]
        (2, 4)
    """

    name = "layers"

    def check_options(self, options: dict, config: PruneConfig) -> None:
        try:
            LayersConfig(**options)
        except TypeError:
            known = ", ".join(LayersConfig.__dataclass_fields__)
            unknown = ", ".join(sorted(set(options) - set(LayersConfig.__dataclass_fields__)))
            raise ValueError(f"layers: unknown option(s) {unknown}; known: {known}") from None

    def run(self, model, criterion, ctx: PruneContext) -> dict:
        lcfg = LayersConfig(**ctx.options)
        if lcfg.select == "score" and "layers" not in getattr(criterion, "kinds", ()):
            raise ValueError(f"criterion {criterion.name!r} does not score whole blocks; use 'dominance' "
                             "(or 'random', or options={'select': 'first' | 'last'})")
        stacks = get_kind("layers").stacks(model)
        stacks = [s for s in stacks if s.n > 0]
        if not stacks:
            raise ValueError(f"no removable block lists found in {type(model).__name__}: depth pruning needs an "
                             "nn.ModuleList of identical blocks, or an adapter's layer_stacks()")
        total = sum(s.n for s in stacks)
        room = min(total - max(lcfg.min_keep, sum(s.min_keep for s in stacks)), total)
        if room <= 0:
            raise ValueError(f"layers: {type(model).__name__} has {total} removable blocks and must keep "
                             f"{max(lcfg.min_keep, sum(s.min_keep for s in stacks))}: nothing can be removed")
        angular = getattr(criterion, "measure", None) == "angular"
        needs_scores = lcfg.select == "score"
        scores: Dict[int, torch.Tensor] = {}
        if needs_scores:
            criterion.calibrate(model, ctx.calibration, groups=stacks, loss_fn=ctx.loss_fn)
            scores = {id(s): checked_scores(criterion, s) for s in stacks}

        def plan(k: int) -> Dict[int, List[int]]:
            if lcfg.select != "score" or angular:
                return self._plan_per_stack(stacks, k, lcfg.select, criterion if angular else None)
            return self._plan_global(stacks, scores, k)

        auto = None
        if lcfg.keep == "auto":
            max_k = min(room, int(math.floor(ctx.config.ratio * total + 1e-9)))
            k, auto = self._auto(model, stacks, plan, max_k, lcfg.tolerance, ctx)
        elif lcfg.keep is not None:
            if lcfg.keep > total:
                raise ValueError(f"layers: keep={lcfg.keep} but the model has only {total} removable blocks")
            k = min(total - lcfg.keep, room)
            if total - k > lcfg.keep:
                warnings.warn(f"layers: keep={lcfg.keep} asked, but the stacks' min_keep leave {total - k} blocks",
                              stacklevel=3)
        else:
            k = min(int(round(ctx.config.ratio * total)), room)
            if k == 0:
                warnings.warn(f"layers: ratio={ctx.config.ratio} of {total} blocks rounds to 0 blocks; nothing removed",
                              stacklevel=3)
        chosen = plan(k) if k > 0 else {}
        record_stacks = {}
        for s in stacks:
            before = s.n
            original = [getattr(b, "compress_block_index", i) for i, b in enumerate(s.blocks)]
            rm = chosen.get(id(s), [])
            kept = get_kind("layers").cut_blocks(model, s, rm) if rm else list(range(before))
            record_stacks[s.path] = {
                "before": before, "after": s.n, "removed": [original[i] for i in sorted(rm)],
                "kept": [original[i] for i in kept],
                **({"scores": [round(float(v), 6) for v in scores[id(s)]]} if id(s) in scores else {})}
            ctx.log(f"{s.path}: removed blocks {record_stacks[s.path]['removed']} of {before}")
        out = {"blocks_before": total, "blocks_after": total - k, "blocks_removed": k,
               "select": lcfg.select, "stacks": record_stacks,
               "measure": getattr(criterion, "measure", None) if needs_scores else None}
        if auto is not None:
            out["auto"] = auto
        # what `compress.models.saving` reads to rebuild the architecture: original indices per stack
        removed = {k: list(v) for k, v in dict(getattr(model, "compress_removed_blocks", None) or {}).items()}
        for p, r in record_stacks.items():
            if r["removed"]:
                removed[p] = sorted(set(removed.get(p, [])) | set(r["removed"]))
        if removed:
            model.compress_removed_blocks = removed
        return out

    # --- planning ---------------------------------------------------------------------------
    @staticmethod
    def _plan_global(stacks, scores, k: int) -> Dict[int, List[int]]:
        """The k lowest-scored blocks across stacks, never below a stack's min_keep."""
        pool = sorted(((float(scores[id(s)][i]), si, i) for si, s in enumerate(stacks) for i in range(s.n)),
                      key=lambda t: (t[0], t[1], t[2]))
        left = {id(s): s.n for s in stacks}
        plan: Dict[int, List[int]] = {}
        for _, si, i in pool:
            if k == 0:
                break
            s = stacks[si]
            if left[id(s)] <= s.min_keep:
                continue
            plan.setdefault(id(s), []).append(i)
            left[id(s)] -= 1
            k -= 1
        return plan

    @staticmethod
    def _allocate(stacks, k: int) -> List[int]:
        """k removals shared across stacks in proportion to their sizes (largest remainder)."""
        total = sum(s.n for s in stacks)
        room = [s.n - s.min_keep for s in stacks]
        quota = [k * s.n / total for s in stacks]
        take = [min(int(math.floor(q)), r) for q, r in zip(quota, room)]
        order = sorted(range(len(stacks)), key=lambda j: (-(quota[j] - math.floor(quota[j])), j))
        while sum(take) < k:
            progressed = False
            for j in order:
                if sum(take) < k and take[j] < room[j]:
                    take[j] += 1
                    progressed = True
            if not progressed:
                break
        return take

    def _plan_per_stack(self, stacks, k: int, select: str, criterion) -> Dict[int, List[int]]:
        plan: Dict[int, List[int]] = {}
        for s, n in zip(stacks, self._allocate(stacks, k)):
            if n == 0:
                continue
            if select == "first":
                plan[id(s)] = list(range(n))
            elif select == "last":
                plan[id(s)] = list(range(s.n - n, s.n))
            else:  # angular: the window of n consecutive blocks that moves the hidden state least
                w = criterion.window_scores(s, n)
                start = int(torch.argsort(w, stable=True)[0])
                plan[id(s)] = list(range(start, start + n))
        return plan

    @staticmethod
    def _auto(model, stacks, plan, max_k: int, tolerance: float, ctx: PruneContext):
        """Largest k <= max_k whose removal set, skipped, keeps the loss within tolerance."""
        from ..criteria.dominance import skipping
        from .progressive import masked_loss

        batches = ctx.validation or ctx.calibration
        if not batches:
            raise ValueError("layers: keep='auto' measures the loss with blocks skipped: pass validation= "
                             "(or calibration=) batches")
        with torch.no_grad():
            base = masked_loss(model, batches, ctx.loss_fn)
            trail = [{"removed": 0, "loss": base}]
            best = 0
            for k in range(1, max_k + 1):
                p = plan(k)
                pairs = [(s, i) for s in stacks for i in p.get(id(s), [])]
                with skipping(pairs):
                    loss = masked_loss(model, batches, ctx.loss_fn)
                trail.append({"removed": k, "loss": loss})
                if loss <= base * (1.0 + tolerance):
                    best = k
        return best, {"tolerance": tolerance, "on": "validation" if ctx.validation else "calibration",
                      "base_loss": base, "trail": trail, "chosen_removed": best}
