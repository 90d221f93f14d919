"""Model families behind one `Forecaster` interface (`available()`, `status()`, `load(name, ...)`,
`save_pretrained(model, dir)` for the families' own layouts)."""
from .base import Forecaster, available, get_adapter, load, register, status
from .native import NativeLayoutError, save_pretrained
from .packages import MissingPackageError

__all__ = ["Forecaster", "available", "status", "load", "register", "get_adapter", "save_pretrained",
           "NativeLayoutError", "MissingPackageError"]
