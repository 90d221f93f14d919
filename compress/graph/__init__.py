"""Tracing a forecaster into prunable unit groups.

torch-pruning's `DependencyGraph` does the tracing and the channel surgery; this package
adds what it does not do for forecasting Transformers, one concern per module:

* `attention` - attention heads as units: `AttentionSpec` (how to cut whole heads out of
  one module) and the recogniser registry (`register_attention`, `recognize`).
* `mha` - the prunable drop-in for `nn.MultiheadAttention` and the swap that installs it.
* `tracing` - running the model, naming the module that failed, hiding recognised
  attention modules from the tracer, inferring the protected embedding and head.
* `timelimit` - the wall-clock limit around tracing.
* `ffn` - FFN groups read from torch-pruning's dependency groups.
* `kinds` - the unit-kind registry (`UnitKind`, `register_kind`): how each kind of unit
  ("ffn", "heads", ...) is found, masked, cut and fixed up.
* `masks` - `MaskSet`, the one set of unit masks the progressive strategy and the Taylor
  criterion share.
* `units` / `surgery` - `UnitGroup` and `PruningGraph.prune_group` (the physical cut).
* `builder` - `build`, which ties them together (and `trace_protected`, one trace without
  grouping, for unstructured pruning).
* `checks` - the forward check after every cut (`PruningGraph.apply`): the pruned model
  must compute what the original computes with the removed units masked.
* `outputs` - flattening and rebuilding outputs of any container type.
* `memory` - `release_memory` and `describe_sizes`.

Everything public is re-exported here, so `compress.graph.build`, `compress.graph.UnitGroup`
... are the names to use.
"""
from .attention import (HEAD_ATTRS, INNER_ATTRS, AttentionSpec, _attr_fix, _default_fix, _generic_qkvo,
                        head_count, recognize, register_attention)
from .builder import build, trace_protected
from .checks import WIDTH_ATTRS, CutReport, compare_outputs, cut_checked, group_records, not_prunable_summary
from .errors import GraphBuildError
from .ffn import find_ffn_groups
from .kinds import FindContext, UnitKind, available_kinds, get_kind, register_kind
from .masks import MaskSet, scale_site_input, site_channel_dim
from .memory import describe_sizes, release_memory
from .mha import MultiheadAttention, _merge_masks, swap_torch_mha
from .surgery import PruningGraph
from .timelimit import TimeLimitExceeded, time_limit
from .tracing import (TraceRecord, _first_tensor, _module_names, opaque_hook, _OpaqueAttentionPruner, _unwrapped_parameters,
                      infer_protected, module_trail, run_model)
from .units import UnitGroup

__all__ = [
    "AttentionSpec", "UnitGroup", "PruningGraph", "build", "register_attention",
    "MultiheadAttention", "GraphBuildError", "describe_sizes", "HEAD_ATTRS",
    "UnitKind", "register_kind", "get_kind", "available_kinds", "FindContext", "MaskSet",
]
