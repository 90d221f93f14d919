"""Importance criteria: `available()`, `get(name, **kw)`, one small class per criterion."""
from .base import Criterion, WeightGroup, available, get, register
from . import activation, dominance, magnitude, random, taylor  # noqa: F401  (registration)
from .activation import Activation
from .dominance import Dominance
from .magnitude import Magnitude
from .random import Random
from .taylor import Taylor

__all__ = ["Criterion", "WeightGroup", "available", "get", "register",
           "Magnitude", "Taylor", "Activation", "Random", "Dominance"]
