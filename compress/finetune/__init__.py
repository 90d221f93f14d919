"""Recovery after pruning: full fine-tuning with early stopping, and evaluation."""
from .trainer import FinetuneConfig, evaluate, finetune

__all__ = ["FinetuneConfig", "finetune", "evaluate"]
