"""Imports every adapter file so that each registers its family (one line per family).

Adapters import their model packages lazily inside `build`, so this stays cheap.
"""
import importlib

_ADAPTERS = (
    # one module name per family file under compress/models/
    "transformer",
    "informer",
    "autoformer",
    "fedformer",
    "crossformer",
    "ttm",
    "patchtst",
    "timesfm",
    "chronos_bolt",
    "moment",
    "moirai",
)

for _name in _ADAPTERS:
    importlib.import_module(f"{__package__}.{_name}")
