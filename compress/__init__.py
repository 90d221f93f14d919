"""compress: make time-series forecasting Transformers smaller and faster, and prove it.

Example:
    >>> import compress
    >>> small = compress.prune(model, criterion="taylor", ratio=0.5, calibration=batches)  # doctest: +SKIP
    >>> print(compress.measure(small, x).compare(compress.measure(model, x)))                # doctest: +SKIP
"""
from . import criteria, graph, models, strategies
from .api import prune
# `compress.finetune` is the subpackage, made callable: `compress.finetune(model, train, val)`
# runs the function and `import compress.finetune.trainer` still works (see its docstring)
from . import finetune
from .finetune import evaluate, prune_then_finetune
# bound eagerly: a lazy attribute would be shadowed by the submodule `compress.measure` as
# soon as anything imports it, turning `compress.measure(...)` into a call on a module
from .measure import Measurement, measure
from .export import export_onnx
from .sparse import sparsify

__all__ = ["prune", "finetune", "evaluate", "prune_then_finetune", "criteria", "strategies", "graph", "models",
           "measure", "Measurement", "sparsify", "export_onnx", "data", "analysis"]
__version__ = "0.1.0"


def __getattr__(name):  # data and analysis are imported on first use
    import importlib

    if name in ("data", "analysis"):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
