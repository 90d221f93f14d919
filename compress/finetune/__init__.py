"""Recovery after pruning: full fine-tuning with early stopping, evaluation, and the
prune-then-finetune method as one call.

`compress.finetune` is both this package and the function `compress.finetune(model,
train, val, ...)`: the package module is made callable (it forwards to
`compress.finetune.finetune`), so the top-level name can stay the function users call
while `import compress.finetune.trainer` and other submodules keep working. Binding the
function itself to `compress.finetune` would shadow the package.

Example:
    >>> import compress, compress.finetune.trainer
    >>> compress.finetune.trainer.FinetuneConfig is compress.finetune.FinetuneConfig
    True
    >>> callable(compress.finetune)
    True
"""
import inspect as _inspect
import sys as _sys
import types as _types

from .lora import merge_lora
from .prune_then_finetune import prune_then_finetune
from .trace import TraceConfig
from .trainer import FinetuneConfig, evaluate, finetune

__all__ = ["FinetuneConfig", "TraceConfig", "finetune", "evaluate", "prune_then_finetune", "merge_lora"]


class _CallablePackage(_types.ModuleType):
    """The package's module type: calling the package calls its `finetune` function."""

    def __call__(self, *args, **kwargs):
        return self.finetune(*args, **kwargs)

    @property
    def __signature__(self):  # inspect.signature(compress.finetune) shows the function's
        return _inspect.signature(self.finetune)


_sys.modules[__name__].__class__ = _CallablePackage
