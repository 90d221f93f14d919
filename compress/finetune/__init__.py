"""Recovery after pruning: full fine-tuning with early stopping, evaluation, and the
prune-then-finetune method as one call."""
from .prune_then_finetune import prune_then_finetune
from .trainer import FinetuneConfig, evaluate, finetune

__all__ = ["FinetuneConfig", "finetune", "evaluate", "prune_then_finetune"]
