"""Dominance: how much each whole block (a Transformer / mixer layer) changes the model.

Depth pruning (`compress.prune(..., strategy="layers")`) removes whole blocks from their
layer lists; this criterion scores them. It exists as its own module because block scores
are a different kind of score from the per-channel / per-head ones of the other criteria:
one number per block, read from the block's input and output hidden states (forward hooks,
one pass over the calibration windows), or from the loss with the block skipped. Nothing
in torch-pruning scores or removes layers, so this is written here.

Measures (`measure=`), each "higher = more important = keep":

* `cosine`: 1 - cos(h_in, h_out), averaged over tokens (ShortGPT's block influence).
* `angular`: arccos(cos(h_in[l], h_out[l+n-1])) / pi, averaged over tokens: how far n
  consecutive blocks starting at l move the hidden state (Gromov et al., "The Unreasonable
  Ineffectiveness of the Deeper Layers"). As a per-block score n = 1; the `layers`
  strategy asks `window_scores(stack, n)` to remove the n consecutive blocks that move it
  least.
* `cka`: 1 - linear CKA(h_in, h_out) over the calibration tokens (Kornblith et al. 2019;
  streamed: only D x D moment matrices are kept).
* `removal`: the calibration loss with the block skipped (its output replaced by its
  input) minus the loss of the full model: the direct, costly measure (one extra pass
  over the calibration windows per block).

Which to use by default was measured (`benchmarks/depth/`, results in
`benchmarks/results/depth/`, table in its `report.md`): the Spearman rank correlation of each
measure, computed on 2 calibration batches of 32 training windows, with the real increase of
the validation MSE (4 batches of 32) when that block alone is removed (no fine-tuning):

    model (blocks)        dataset   cosine  angular  cka    removal
    TTM r2 (8)            ETTh1     +0.57   +0.62    +0.81  +0.48
    TTM r2 (8)            ETTm1     +0.12   +0.21    +0.17  +0.19
    TTM r2 (8)            Weather   +0.45   +0.67    +0.62  -0.24
    patchtst-deep (12)    ETTh1     +0.24   +0.24    +0.38  +0.92
    patchtst-deep (12)    ETTm1     +0.43   +0.43    +0.45  +0.40
    patchtst-deep (12)    Weather   +0.31   +0.34    +0.27  +0.97
    patchtst-mini (3)     ETTh1     -0.50   -0.50    -0.50  +0.50
    patchtst-mini (3)     ETTm1     +0.50   +0.50    +0.50  -0.50
    patchtst-mini (3)     Weather   +1.00   +1.00    +1.00  +1.00
    transformer-e6 (7)    ETTm1     +0.61   +0.61    +0.32  +0.39
    crossformer (5)       ETTm1     +0.90   +0.90    +0.70  +1.00
    mean (11 pairs)                 +0.42   +0.46    +0.43  +0.47

The rule: the default is the measure with the highest mean over every measured pair, so it
is `removal` (+0.47; also the highest mean without the 3-block pairs, +0.51 vs angular +0.50,
cka +0.47, cosine +0.45). The margin is small and within the noise of so few windows, but
`removal` is far ahead on the deepest subject (the 12-layer PatchTST: +0.92 / +0.40 / +0.97
vs cka +0.38 / +0.45 / +0.27), and it is the measure every dominance cell of the experiment
used, so the depth results reported describe the default. Its cost: one extra pass over the
calibration windows per block (summed over the 11 pairs: 237 s of scoring vs 52 s for cka,
40 s for cosine / angular). `cka` or `angular` (one pass) are the cheap choice for deep
models or large calibration sets. With 3 blocks a rank correlation says little.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .base import Criterion, default_loss, forward_loss, register, split_batch

__all__ = ["Dominance", "MEASURES", "hidden_input", "first_tensor", "replace_first", "skipping"]

MEASURES = ("cosine", "angular", "cka", "removal")

#: mean Spearman correlation with the real validation-loss increase of removing each block
#: (11 model/dataset pairs, benchmarks/results/depth/); the default is its best, "removal"
DEFAULT_MEASURE_EVIDENCE: Dict[str, float] = {"cosine": 0.42, "angular": 0.46, "cka": 0.43, "removal": 0.47}
DEFAULT_MEASURE = max(DEFAULT_MEASURE_EVIDENCE, key=DEFAULT_MEASURE_EVIDENCE.get)


# --- hidden states of a block ---------------------------------------------------------------
_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x", "inputs_embeds", "src")


def hidden_input(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The hidden state a block is called with: its first tensor argument (or a known keyword)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for k in _HIDDEN_KWARGS:
        if isinstance(kwargs.get(k), torch.Tensor):
            return kwargs[k]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def first_tensor(output) -> Optional[torch.Tensor]:
    """The hidden state a block returns: the output itself or its first tensor element."""
    from ..graph import _first_tensor

    return _first_tensor(output)


def replace_first(output, new: torch.Tensor):
    """`output` with its first tensor (the block's hidden state) replaced by `new`.

    Tuples keep their other entries (attention weights, T5's position biases), so skipping a
    block with this is exactly removing it from its stack.
    """
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        items = list(output)
        for i, o in enumerate(items):
            if isinstance(o, torch.Tensor):
                items[i] = new
                return tuple(items)
    if isinstance(output, list):
        return [new] + list(output[1:]) if output and isinstance(output[0], torch.Tensor) else output
    if hasattr(output, "keys"):  # ModelOutput / dict: the first tensor value
        for k in output.keys():
            if isinstance(output[k], torch.Tensor):
                output[k] = new
                return output
    raise TypeError(f"cannot replace the hidden state in a block output of type {type(output).__name__}; "
                    "give the stack a skip= function")


def default_skip(output, hidden_in: torch.Tensor):
    """What a skipped block returns: its input in place of its hidden-state output."""
    return replace_first(output, hidden_in)


@contextlib.contextmanager
def skipping(pairs: Iterable):
    """Skip blocks while inside: `pairs` of (stack, index); the block still runs (so side
    outputs such as T5's position bias are computed) but its hidden output is its input.

    Example:
        >>> with skipping([(stack, 0)]):                      # doctest: +SKIP
        ...     y = model(x)
    """
    handles = []
    try:
        for stack, i in pairs:
            block = stack.blocks[i]
            skip = getattr(stack, "skip", None) or default_skip
            handles.append(block.register_forward_hook(_skip_hook(skip), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _skip_hook(skip: Callable):
    def hook(module, args, kwargs, output):
        h = hidden_input(args, kwargs)
        return skip(output, h)
    return hook


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(-1, x.shape[-1])  # [N, D]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, D], [N, D] -> [N]
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, D], [N, D] -> [N] radians
    # 2 atan2(|u - v|, |u + v|) for unit u, v: exact near 0 and pi, where arccos(cos) loses digits
    u = torch.nn.functional.normalize(a, dim=-1, eps=1e-12)
    v = torch.nn.functional.normalize(b, dim=-1, eps=1e-12)
    return 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


@register
class Dominance(Criterion):
    """Per-block scores for depth pruning (`strategy="layers"`), higher = more important.

    Args:
        measure: "removal" (default: the calibration-loss increase with the block skipped,
            one pass per block; the best predictor of the real removal loss in our
            measurements, mean Spearman +0.47 over 11 model/dataset pairs), "cka" (+0.43),
            "angular" (+0.46) or "cosine" (+0.42) (one forward pass each); see the module
            docstring.

    Example:
        >>> import torch, compress
        >>> from tests.tiny import TinyForecaster                           # doctest: +SKIP
        >>> model = TinyForecaster(n_layers=4)                              # doctest: +SKIP
        >>> cal = [(torch.randn(8, 16, 3), torch.randn(8, 4, 3))]           # doctest: +SKIP
        >>> small = compress.prune(model, "dominance", ratio=0.5, strategy="layers",
        ...                        calibration=cal)                         # doctest: +SKIP
        >>> len(small.blocks)                                               # doctest: +SKIP
        2
    """

    name = "dominance"
    requires_data = True
    kinds = ("layers",)

    def __init__(self, measure: str = DEFAULT_MEASURE):
        if measure not in MEASURES:
            raise ValueError(f"dominance: unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        self.measure = measure
        self._scores: Dict[int, torch.Tensor] = {}
        self._angular: Dict[int, torch.Tensor] = {}  # [n_blocks, n_blocks]: angular(start l, end m)
        self.base_loss: Optional[float] = None

    # --- calibration ------------------------------------------------------------------------
    def calibrate(self, model: nn.Module, batches=None, *, groups: Sequence = (), loss_fn=None):
        super().calibrate(model, batches, groups=groups, loss_fn=loss_fn)
        stacks = [g for g in groups if hasattr(g, "blocks")]
        if not stacks:
            raise ValueError("dominance scores whole blocks: use it with strategy='layers' "
                             "(compress.prune(model, 'dominance', strategy='layers', ...))")
        batches = list(batches)
        loss_fn = loss_fn or default_loss
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                base = self._pass_statistics(model, batches, stacks, loss_fn)
                self.base_loss = base
                if self.measure == "removal":
                    for s in stacks:
                        inc = torch.zeros(s.n)
                        for i in range(s.n):
                            with skipping([(s, i)]):
                                inc[i] = _mean_loss(model, batches, loss_fn) - base
                        self._scores[id(s)] = inc
        finally:
            model.train(was)
        return self

    def _pass_statistics(self, model, batches, stacks, loss_fn) -> float:
        """One pass: the loss of the full model and the hidden-state statistics of every block."""
        n_tok = {id(s): [0.0] * s.n for s in stacks}
        cos_sum = {id(s): torch.zeros(s.n) for s in stacks}
        ang_sum = {id(s): torch.zeros(s.n, s.n) for s in stacks}
        moments: Dict[tuple, dict] = {}
        states: Dict[int, list] = {}

        def pre(s, i):
            def hook(module, args, kwargs):
                states[id(s)][i][0] = hidden_input(args, kwargs)
            return hook

        def post(s, i):
            def hook(module, args, kwargs, output):
                states[id(s)][i][1] = first_tensor(output)
            return hook

        handles = []
        for s in stacks:
            for i, b in enumerate(s.blocks):
                handles.append(b.register_forward_pre_hook(pre(s, i), with_kwargs=True))
                handles.append(b.register_forward_hook(post(s, i), with_kwargs=True))
        total = count = 0.0
        try:
            for batch in batches:
                for s in stacks:
                    states[id(s)] = [[None, None] for _ in range(s.n)]
                n = split_batch(batch)[1].numel()
                total += float(forward_loss(model, batch, loss_fn)) * n
                count += n
                for s in stacks:
                    ios = states[id(s)]
                    for i, (hi, ho) in enumerate(ios):
                        if hi is None or ho is None:
                            raise RuntimeError(f"dominance: block {i} of {s.name} did not run on the calibration "
                                               "batch; its stack cannot be scored")
                        if hi.shape != ho.shape:
                            raise ValueError(f"dominance: block {i} of {s.name} maps hidden states shaped "
                                             f"{tuple(hi.shape)} to {tuple(ho.shape)}; a block that changes the "
                                             "shape cannot be removed (declare only shape-preserving blocks)")
                    toks = [(_tokens(hi), _tokens(ho)) for hi, ho in ios]
                    for i, (a, b) in enumerate(toks):
                        c = _cos(a, b)
                        cos_sum[id(s)][i] += float((1.0 - c).sum())
                        n_tok[id(s)][i] += a.shape[0]
                        for m in range(i, s.n):  # angular distance from the input of i to the output of m
                            bm = toks[m][1]
                            if bm.shape != a.shape:
                                continue
                            ang = _angle(a, bm) / math.pi
                            ang_sum[id(s)][i, m] += float(ang.sum())
                        if self.measure == "cka":
                            _accumulate_moments(moments.setdefault((id(s), i), {}), a, b)
                    states[id(s)] = None
        finally:
            for h in handles:
                h.remove()
        if count == 0:
            raise ValueError("calibration is empty: pass at least one (inputs, target) batch")
        for s in stacks:
            nt = torch.tensor(n_tok[id(s)]).clamp_min(1.0)
            self._angular[id(s)] = ang_sum[id(s)] / nt[:, None]
            if self.measure == "cosine":
                self._scores[id(s)] = cos_sum[id(s)] / nt
            elif self.measure == "angular":
                self._scores[id(s)] = torch.diagonal(self._angular[id(s)]).clone()
            elif self.measure == "cka":
                self._scores[id(s)] = torch.tensor([1.0 - _linear_cka(moments[(id(s), i)]) for i in range(s.n)])
        return total / count

    # --- scores -----------------------------------------------------------------------------
    def score(self, group) -> torch.Tensor:
        try:
            return self._scores[id(group)].clone()
        except KeyError:
            raise RuntimeError("dominance.score() before calibrate(): call calibrate(model, batches, "
                               "groups=[stacks])") from None

    def window_scores(self, group, n: int) -> torch.Tensor:
        """Angular distance from the input of block l to the output of block l+n-1, per start l.

        Lower = those n consecutive blocks change the hidden state least (remove them first).
        """
        ang = self._angular.get(id(group))
        if ang is None:
            raise RuntimeError("dominance.window_scores() before calibrate()")
        k = ang.shape[0]
        if not 1 <= n <= k:
            raise ValueError(f"window of {n} blocks in a stack of {k}")
        return torch.stack([ang[l, l + n - 1] for l in range(k - n + 1)])


def _mean_loss(model, batches, loss_fn) -> float:
    total = count = 0.0
    for batch in batches:
        n = split_batch(batch)[1].numel()
        total += float(forward_loss(model, batch, loss_fn)) * n
        count += n
    return total / max(count, 1.0)


def _accumulate_moments(acc: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    x, y = x.double(), y.double()
    for key, val in (("n", float(x.shape[0])), ("sx", x.sum(0)), ("sy", y.sum(0)), ("xx", x.T @ x),
                     ("yy", y.T @ y), ("yx", y.T @ x)):
        acc[key] = acc[key] + val if key in acc else val


def _linear_cka(acc: dict) -> float:
    """Linear CKA from streamed first and second moments (features centred over tokens)."""
    n = acc["n"]
    mx, my = acc["sx"] / n, acc["sy"] / n
    cxx = acc["xx"] - n * torch.outer(mx, mx)
    cyy = acc["yy"] - n * torch.outer(my, my)
    cyx = acc["yx"] - n * torch.outer(my, mx)
    den = torch.linalg.norm(cxx) * torch.linalg.norm(cyy)
    return float((torch.linalg.norm(cyx) ** 2 / den).clamp(0.0, 1.0)) if den > 0 else 1.0
