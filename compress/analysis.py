"""Sparsity analyses: is a (pretrained) forecaster sparse and redundant on a given task?

The evidence the prune-then-finetune paper (Zhao et al., NeurIPS 2025) gives that TSFMs
are prunable, measured per layer on your data:

* `activation_sparsity`: the share of FFN channels whose activation probability (share
  of tokens on which the channel's activation, the input of the down projection, is > 0)
  is below a threshold (5%): channels that hardly ever fire.
* `head_output_norms`: each head's mean output norm (its contribution through the output
  projection) relative to the norm of the attention input: heads that hardly contribute.
* `importance_distribution`: the importance scores of every unit (the second-order Taylor
  estimate by default): how many units the loss barely depends on.

All three read the model through `compress.graph.build` (the same FFN and head groups the
pruning strategies cut) and the `activation` / `taylor` criteria, on a copy of the model.
The `plot_*` functions write PNGs; matplotlib is imported only inside them.

Example:
    >>> from compress import analysis                                           # doctest: +SKIP
    >>> batches = compress.data.load("ETTh1", 512, 96, "val").batches(32, limit=4)  # doctest: +SKIP
    >>> analysis.plot_activation_sparsity(analysis.activation_sparsity(model, batches), "sparsity.png")  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import criteria as _criteria
from . import graph as G
from .models.base import pruning_hooks
from .criteria.base import split_batch

__all__ = ["activation_probability", "activation_sparsity", "head_output_norms", "importance_distribution",
           "plot_activation_sparsity", "plot_head_norms", "plot_importance", "short_names"]


def _traced(model: nn.Module, batches: Sequence, kinds: Tuple[str, ...], ignore=(), heads=None,
            none_found: Optional[str] = None):
    """A copy of `model` (tracing may swap `nn.MultiheadAttention`) and its groups of `kinds`
    (`none_found`: the error message when there are none, for an analysis of one kind)."""
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: pass at least one (inputs, target) batch, e.g. "
                         "compress.data.load(..., split='val').batches(32, limit=4)")
    model = copy.deepcopy(model)
    hooks = pruning_hooks(model)
    example = hooks.example_inputs()
    if example is None:
        example = split_batch(batches[0])[0]
    hooks.prepare_for_pruning()
    pg = G.build(model, example, ignore=ignore, heads=heads, units=kinds, hooks=hooks)
    order = {id(m): i for i, m in enumerate(model.modules())}
    groups = sorted((g for g in pg.groups if g.kind in kinds), key=lambda g: order.get(id(g.site), 0))  # layer order
    if not groups:
        name = type(model).__name__
        if none_found:
            raise G.GraphBuildError(none_found.format(name=name))
        raise G.GraphBuildError(f"no {' or '.join(kinds)} units found in {name}: the analyses read FFN channels "
                                "(a Linear -> activation -> Linear pair) and attention heads; pass heads= for "
                                "hand-written attention, or ignore= to skip modules that break the trace")
    return model, groups, batches


def activation_probability(model: nn.Module, batches: Sequence, **trace) -> Dict[str, torch.Tensor]:
    """Per FFN group: each channel's activation probability (share of tokens with activation > 0).

    Example:
        >>> probs = activation_probability(model, batches)   # {"blocks.0.fc1.ffn": tensor([...]), ...}  # doctest: +SKIP
    """
    model, groups, batches = _traced(model, batches, ("ffn",), **trace)
    crit = _criteria.get("activation").calibrate(model, batches, groups=groups)
    return {g.name: crit.probability(g) for g in groups}


def activation_sparsity(model: nn.Module, batches: Sequence, threshold: float = 0.05, **trace) -> Dict[str, float]:
    """Per FFN layer: the share of channels whose activation probability is below `threshold`.

    Args:
        model: a forecaster (not modified).
        batches: `(inputs, target)` pairs, e.g. `compress.data.load(...).batches(32, limit=4)`.
        threshold: activation-probability threshold (the paper's 5%).
        **trace: `ignore=`, `heads=` as in `compress.prune`.

    Returns:
        `{ffn group name: share in [0, 1]}` in layer order.

    Example:
        >>> activation_sparsity(model, batches)   # {"blocks.0.fc1.ffn": 0.41, ...}  # doctest: +SKIP
    """
    return {name: float((p < threshold).float().mean()) for name, p in
            activation_probability(model, batches, **trace).items()}


def head_output_norms(model: nn.Module, batches: Sequence, **trace) -> Dict[str, torch.Tensor]:
    """Per attention layer: each head's mean output norm relative to the attention input's norm.

    A head's output is its contribution through the output projection (W_o[:, head] @ x_head),
    averaged over tokens, divided by the mean norm of the attention module's input (the
    `activation` criterion's head score).

    Returns:
        `{attention group name: tensor [n_heads]}`.

    Example:
        >>> head_output_norms(model, batches)   # {"blocks.0.attn.heads": tensor([0.31, 0.02, ...]), ...}  # doctest: +SKIP
    """
    model, groups, batches = _traced(
        model, batches, ("heads",), none_found=(
            "{name} has no attention heads that compress recognises (an MLP-Mixer such as TTM has none), so "
            "head_output_norms has nothing to measure. For hand-written attention pass heads={{module_or_name: "
            "n_heads}}; activation_sparsity and importance_distribution(units=('ffn',)) need no heads."), **trace)
    crit = _criteria.get("activation").calibrate(model, batches, groups=groups)
    return {g.name: crit.score(g) for g in groups}


def importance_distribution(model: nn.Module, batches: Sequence, criterion="taylor",
                            units: Sequence[str] = ("ffn", "heads"), loss_fn=None, **trace) -> Dict[str, torch.Tensor]:
    """Per unit group: the importance scores of its units.

    Args:
        criterion: a criterion name or instance; "taylor" is the paper's second-order
            estimate on unit masks (`taylor`, `order=2`, `ema=0.9`).
        units: which groups to score ("ffn", "heads").
        loss_fn: loss for loss-guided criteria (MSE by default).

    Returns:
        `{group name: tensor [n units]}` (higher = more important).

    Example:
        >>> scores = importance_distribution(model, batches)   # doctest: +SKIP
    """
    crit = _criteria.get("taylor", order=2, ema=0.9) if criterion == "taylor" else _criteria.get(criterion)
    model, groups, batches = _traced(model, batches, tuple(units), **trace)
    crit.calibrate(model, batches, groups=groups, loss_fn=loss_fn)
    return {g.name: crit.score(g).detach().float() for g in groups}


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    except ImportError:  # pragma: no cover
        raise ImportError("the compress.analysis plots need matplotlib: pip install 'compress-tsfm[bench]'") from None

    # constrained layout makes room for rotated tick labels and titles (tight_layout warns
    # when it cannot, and then clips)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def short_names(names: Sequence[str], max_len: int = 28) -> Tuple[list, str]:
    """Readable, still distinct layer labels for `names` (group names such as
    ``model.backbone.encoder.mixers.0.mixer_layers.1.patch_mixer.mlp.fc1.ffn``).

    Drops the unit kind (a registered kind's name: ``.ffn``, ``.heads``, ...), the dotted prefix and suffix all names
    share, then words every name has (keeping indices); if still longer than `max_len`, keeps
    the indices and the last word (after the first word, where that differs: ``encoder:``
    / ``decoder:``), and finally cuts what is still too long from the left ("…"). Names stay
    distinct at every step.

    Returns:
        (labels, the common prefix that was dropped, for an axis label).

    Example:
        >>> short_names(["m.enc.layers.0.ff.0.ffn", "m.enc.layers.1.ff.0.ffn"])
        (['0', '1'], 'm.enc.layers')
    """
    parts = [n.split(".") for n in names]
    kinds = set(G.available_kinds())
    parts = [p[:-1] if len(p) > 1 and p[-1] in kinds else p for p in parts]
    if len(parts) < 2:
        return [".".join(p[-2:]) for p in parts], ".".join(parts[0][:-2]) if parts else ""

    def distinct(cand):
        return len(set(map(tuple, cand))) == len(cand) and all(cand)

    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    prefix = ".".join(parts[0][:pre])
    parts = [p[pre:] for p in parts]
    suf = 0
    while all(len(p) > suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    if suf and distinct([p[:-suf] for p in parts]):
        parts = [p[:-suf] for p in parts]
    if max(len(".".join(p)) for p in parts) > max_len:
        everywhere = set.intersection(*(set(p) for p in parts))
        cand = [[t for t in p if t.isdigit() or t not in everywhere] for p in parts]
        if distinct(cand):
            parts = cand
    if max(len(".".join(p)) for p in parts) > max_len:  # still long: the indices and the last word,
        heads = {p[0] for p in parts}                    # after the first word where that differs
        cand = [([p[0] + ":"] if len(heads) > 1 and not p[0].isdigit() else [])
                + [t for t in p[1:-1] if t.isdigit()] + [p[-1]] for p in parts]
        if distinct(cand):
            parts = [[c[0] + ".".join(c[1:])] if c[0].endswith(":") else c for c in cand]
    labels = [".".join(p) for p in parts]
    cut = ["…" + lab[-(max_len - 1):] if len(lab) > max_len else lab for lab in labels]
    return (cut if len(set(cut)) == len(cut) else labels), prefix


def _layer_axis(ax, names: Sequence[str]) -> None:
    labels, prefix = short_names(names)
    ax.set_xticks(range(len(names)))
    longest = max(len(lab) for lab in labels)
    ax.set_xticklabels(labels, rotation=0 if longest * len(labels) < 60 else 45,
                       ha="center" if longest * len(labels) < 60 else "right", fontsize=8)
    ax.set_xlabel(f"layer ({prefix}.…)" if prefix else "layer", fontsize=8)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_activation_sparsity(sparsity: Dict[str, float], path, *, threshold: float = 0.05,
                             title: Optional[str] = None) -> Path:
    """Bar chart of `activation_sparsity` per layer, written to `path` (PNG).

    Example:
        >>> plot_activation_sparsity(activation_sparsity(model, batches), "sparsity.png")  # doctest: +SKIP
    """
    if not sparsity:
        raise ValueError("nothing to plot: sparsity is empty")
    names = list(sparsity)
    fig, ax = _figure(max(5.0, 0.45 * len(names) + 2), 3.6)
    ax.bar(range(len(names)), [100 * sparsity[n] for n in names], color="#4C72B0")
    _layer_axis(ax, names)
    ax.set_ylabel(f"FFN channels with\nP(active) < {threshold:.0%} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Low-activation FFN channels per layer")
    return _save(fig, path)


def plot_head_norms(norms: Dict[str, torch.Tensor], path, *, title: Optional[str] = None) -> Path:
    """Box plot (with the heads as dots) of `head_output_norms` per layer, written to `path`.

    Example:
        >>> plot_head_norms(head_output_norms(model, batches), "heads.png")  # doctest: +SKIP
    """
    if not norms:
        raise ValueError("nothing to plot: norms is empty")
    names = list(norms)
    data = [torch.as_tensor(norms[n]).float().numpy() for n in names]
    fig, ax = _figure(max(5.0, 0.45 * len(names) + 2), 3.6)
    ax.boxplot(data, positions=list(range(len(names))), widths=0.6, showfliers=False)
    for i, d in enumerate(data):
        ax.scatter([i] * len(d), d, s=8, alpha=0.6, color="#DD8452", zorder=3)
    _layer_axis(ax, names)
    ax.set_ylabel("head output norm / input norm")
    ax.set_title(title or "Relative output norm of attention heads per layer")
    return _save(fig, path)


def plot_importance(scores: Dict[str, torch.Tensor], path, *, bins: int = 50, title: Optional[str] = None) -> Path:
    """Histogram of `importance_distribution` scores, FFN channels and heads apart, written to `path`.

    The y axis is logarithmic (most units score near zero). Taylor scores can be negative:
    removing such a unit is estimated to lower the loss.

    Example:
        >>> plot_importance(importance_distribution(model, batches), "importance.png")  # doctest: +SKIP
    """
    if not scores:
        raise ValueError("nothing to plot: scores is empty")
    kinds = G.available_kinds()
    by_kind: Dict[str, list] = {}
    for name, s in scores.items():  # a group's name ends with its kind's name
        kind = next((G.get_kind(k).label for k in kinds if name.endswith("." + k)), "units")
        by_kind.setdefault(kind, []).append(torch.as_tensor(s).float().flatten())
    fig, ax = _figure(6.0, 3.6)
    all_s = torch.cat([torch.cat(v) for v in by_kind.values()])
    lo, hi = float(all_s.min()), float(all_s.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    palette = ["#4C72B0", "#DD8452", "#C44E52", "#8172B3", "#937860", "#DA8BC3"]  # one per kind, in registry order
    colors = {G.get_kind(k).label: palette[i % len(palette)] for i, k in enumerate(kinds)}
    colors["units"] = "#55A868"
    for kind, parts in by_kind.items():
        s = torch.cat(parts).numpy()
        ax.hist(s, bins=bins, range=(lo, hi), alpha=0.6, label=f"{kind} ({len(s)})", color=colors[kind])
    ax.set_yscale("log")
    ax.set_xlabel("importance score (higher = keep)")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    ax.set_title(title or "Distribution of importance scores")
    return _save(fig, path)
