"""Model families behind one `Forecaster` interface (`available()`, `load(name, ...)`)."""
from .base import Forecaster, available, get_adapter, load, register

__all__ = ["Forecaster", "available", "load", "register", "get_adapter"]
