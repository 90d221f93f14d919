"""Model families behind one `Forecaster` interface (`available()`, `status()`, `load(name, ...)`)."""
from .base import Forecaster, available, get_adapter, load, register, status
from .packages import MissingPackageError

__all__ = ["Forecaster", "available", "status", "load", "register", "get_adapter", "MissingPackageError"]
