"""Experiment configs: a TOML or JSON file that describes a grid of benchmark cells.

Why a file: an experiment is data. The same runner executes every experiment, results
files record the command that made them, and a reviewer can read the grid without
reading code. TOML (stdlib `tomllib`) is preferred; JSON with the same structure works.

Structure (all keys but ``models`` and ``grid`` are optional)::

    name = "quick"
    seed = 0
    datasets = ["ETTh1"]                   # default datasets of every grid
    horizons = [96]                        # default horizons of every grid

    [eval]                                 # how each cell is evaluated and measured
    test_stride = 8                        # step between test windows (CPU cost)
    test_limit = 0                         # at most this many test batches (0: all)
    batch_size = 64                        # evaluation batch size
    calibration_batches = 4                # train batches for data-driven criteria
    calibration_batch_size = 16
    latency_batch_size = 8                 # one fixed test batch, same for every model
    latency_repeats = 10
    threads = 1                            # torch threads for the whole run (timing too)
    max_structured_ratio = 0.9             # structured ratios above it are capped

    [finetune]                             # used by cells with finetune = true
    epochs = 1
    lr = 1e-4
    ...

    [models.transformer]                   # one table per model; grids run all of them
                                           # unless they name some (grid.models)
    family = "transformer"                 # compress.models family (default: the name)
    size = "small"
    checkpoint = "benchmarks/checkpoints/transformer-ETTm1-96-192.pt"  # optional
    config = { d_model = 64 }              # build overrides
    train = { epochs = 1, max_train_batches = 100 }   # optional: train before pruning

    [[grid]]                               # one or more grids; their union is run
    criteria = ["magnitude"]
    strategies = ["structured"]
    ratios = [0.2, 0.5]
    finetune = [false]                     # [false, true] runs both

Instead of tables, ``models = ["ttm", "patchtst"]`` lists families built with their
defaults. Every grid also gets the baseline cell (ratio 0, no criterion) of each model, dataset
and horizon. ``{model}``, ``{dataset}``, ``{horizon}`` and ``{context}`` are expanded in
``checkpoint`` paths.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ConfigError", "Config", "ModelSpec", "Cell", "EvalSettings", "load_config", "parse_config"]


class ConfigError(ValueError):
    """A config file that cannot be run; the message names the file and the key."""


@dataclasses.dataclass
class EvalSettings:
    test_stride: int = 8
    test_limit: int = 0
    batch_size: int = 64
    calibration_batches: int = 4
    calibration_batch_size: int = 16
    latency_batch_size: int = 8
    latency_repeats: int = 10
    threads: int = 1
    max_structured_ratio: float = 0.9
    scope: str = "layer"


@dataclasses.dataclass
class FinetuneSettings:
    epochs: int = 1
    lr: float = 1e-4
    patience: int = 2
    batch_size: int = 32
    max_train_batches: Optional[int] = 100
    max_val_batches: Optional[int] = 20


@dataclasses.dataclass
class ModelSpec:
    """How to obtain the unpruned model `name` (a family, its size, weights, overrides)."""

    name: str
    family: str
    size: str = "small"
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train: Optional[Dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid. `key()` identifies it in a results file (for resume)."""

    model: str
    dataset: str
    horizon: int
    criterion: str
    strategy: str
    ratio: float
    finetune: bool = False

    @property
    def method(self) -> str:
        if self.ratio == 0:
            return "finetune" if self.finetune else "zero-shot"
        return "prune-then-finetune" if self.finetune else "prune"

    def key(self, size: str, seed: int) -> Tuple:
        return cell_key(dict(model=self.model, size=size, dataset=self.dataset, horizon=self.horizon,
                             criterion=self.criterion, strategy=self.strategy, ratio=self.ratio,
                             finetuned=self.finetune, seed=seed))


def cell_key(record: Dict[str, Any]) -> Tuple:
    """The identity of a cell in a results record: what resume and reports de-duplicate on."""
    return (record.get("model"), record.get("size"), str(record.get("dataset")), int(record.get("horizon") or 0),
            record.get("criterion"), record.get("strategy"), round(float(record.get("ratio") or 0.0), 6),
            bool(record.get("finetuned")), int(record.get("seed") or 0))


@dataclasses.dataclass
class Config:
    name: str
    models: Dict[str, ModelSpec]
    cells: List[Cell]
    eval: EvalSettings
    finetune: FinetuneSettings
    seed: int = 0
    path: Optional[str] = None


BASELINE = ("none", "none")  # criterion, strategy of the ratio-0 cells
_TOP_KEYS = {"name", "seed", "models", "datasets", "horizons", "eval", "finetune", "grid", "description"}
_GRID_KEYS = {"models", "datasets", "horizons", "criteria", "strategies", "ratios", "finetune"}
_MODEL_KEYS = {"family", "size", "pretrained", "checkpoint", "config", "train"}
STRATEGIES = ("structured", "unstructured")


def load_config(path: str) -> Config:
    """Read and validate a `.toml` or `.json` experiment config.

    Raises:
        ConfigError: the file is missing, does not parse, or has an unknown / ill-typed key
            (the message names the file and the key).

    Example:
        >>> cfg = load_config("benchmarks/configs/quick.toml")   # doctest: +SKIP
        >>> len(cfg.cells)                                        # doctest: +SKIP
        21
    """
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            import tomllib

            with open(path, "rb") as f:
                raw = tomllib.load(f)
        elif ext == ".json":
            with open(path) as f:
                raw = json.load(f)
        else:
            raise ConfigError(f"{path}: config files are .toml or .json, got {ext or 'no extension'!r}")
    except ConfigError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, json.JSONDecodeError
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    return parse_config(raw, path=path)


def parse_config(raw: Dict[str, Any], path: str = "<config>") -> Config:
    """Validate a config dict (already parsed from TOML/JSON) and expand its grids into cells."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    _unknown(raw, _TOP_KEYS, path, "top level")
    seed = _int(raw.get("seed", 0), path, "seed")
    ev = _settings(EvalSettings, raw.get("eval", {}), path, "eval")
    if ev.scope not in ("layer", "global"):
        raise ConfigError(f"{path}: eval.scope must be 'layer' or 'global', got {ev.scope!r}")
    ft = _settings(FinetuneSettings, raw.get("finetune", {}), path, "finetune")

    grids = raw.get("grid")
    if grids is None:
        raise ConfigError(f"{path}: no [[grid]] table; a config needs at least one grid "
                          "(criteria, strategies, ratios)")
    if isinstance(grids, dict):
        grids = [grids]
    models_raw = raw.get("models", [])
    default_models = models_raw if isinstance(models_raw, list) else list(models_raw)
    model_tables = models_raw if isinstance(models_raw, dict) else {}

    cells: List[Cell] = []
    used: List[str] = []
    for i, g in enumerate(grids):
        where = f"grid[{i}]"
        if not isinstance(g, dict):
            raise ConfigError(f"{path}: {where} must be a table")
        _unknown(g, _GRID_KEYS, path, where)
        models = _str_list(g.get("models", default_models), path, f"{where}.models")
        datasets = _str_list(g.get("datasets", raw.get("datasets")), path, f"{where}.datasets")
        horizons = [_int(h, path, f"{where}.horizons") for h in _list(g.get("horizons", raw.get("horizons")), path, f"{where}.horizons")]
        criteria = _str_list(g.get("criteria"), path, f"{where}.criteria")
        strategies = _str_list(g.get("strategies", ["structured"]), path, f"{where}.strategies")
        for s in strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"{path}: {where}.strategies: unknown strategy {s!r}; choose from {list(STRATEGIES)}")
        ratios = [_ratio(r, path, f"{where}.ratios") for r in _list(g.get("ratios"), path, f"{where}.ratios")]
        finetunes = g.get("finetune", [False])
        finetunes = finetunes if isinstance(finetunes, list) else [finetunes]
        if not all(isinstance(f, bool) for f in finetunes):
            raise ConfigError(f"{path}: {where}.finetune must be true/false or a list of them, got {g.get('finetune')!r}")
        for m in models:
            used.append(m)
            for d in datasets:
                for h in horizons:
                    cells.append(Cell(m, d, h, *BASELINE, 0.0, False))
                    for c in criteria:
                        for s in strategies:
                            for r in ratios:
                                for f in finetunes:
                                    cells.append(Cell(m, d, h, c if r > 0 else BASELINE[0],
                                                      s if r > 0 else BASELINE[1], r, f))
    cells = list(dict.fromkeys(cells))  # keep order, drop repeats (each grid adds the baseline)

    specs: Dict[str, ModelSpec] = {}
    for name in dict.fromkeys(used):
        table = model_tables.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: models.{name} must be a table")
        _unknown(table, _MODEL_KEYS, path, f"models.{name}")
        if table.get("config") is not None and not isinstance(table["config"], dict):
            raise ConfigError(f"{path}: models.{name}.config must be a table of build overrides")
        if table.get("train") is not None and not isinstance(table["train"], dict):
            raise ConfigError(f"{path}: models.{name}.train must be a table of finetune settings")
        specs[name] = ModelSpec(name=name, family=str(table.get("family", name)), size=str(table.get("size", "small")),
                                pretrained=table.get("pretrained"), checkpoint=table.get("checkpoint"),
                                config=dict(table.get("config") or {}), train=table.get("train"))
    name = str(raw.get("name") or (os.path.splitext(os.path.basename(path))[0] if path else "experiment"))
    return Config(name=name, models=specs, cells=cells, eval=ev, finetune=ft, seed=seed, path=path)


# --- validation helpers ------------------------------------------------------------------
def _unknown(table: dict, allowed: set, path: str, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {extra} in {where}; allowed: {sorted(allowed)}")


def _settings(cls, table: Any, path: str, where: str):
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(table, set(fields), path, f"[{where}]")
    obj = cls()
    for k, v in table.items():
        default = getattr(obj, k)
        if isinstance(default, bool) or (default is not None and not isinstance(default, (int, float, str))):
            ok = isinstance(v, type(default))
        elif isinstance(default, str):
            ok = isinstance(v, str)
        else:  # numbers (int fields also accept 0 / None meaning "no limit" where the default is None)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(v, float):
                ok = False
        if not ok:
            raise ConfigError(f"{path}: [{where}] {k} = {v!r} should be a {type(default).__name__ if default is not None else 'integer'}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"{path}: [{where}] {k} = {v!r} must not be negative")
        setattr(obj, k, None if (v == 0 and getattr(cls(), k) is None) else v)
    return obj


def _list(v: Any, path: str, where: str) -> list:
    if v is None:
        raise ConfigError(f"{path}: {where} is missing (give it in the grid or at the top level)")
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{path}: {where} must be a non-empty list, got {v!r}")
    return v


def _str_list(v: Any, path: str, where: str) -> List[str]:
    items = _list(v, path, where)
    if not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{path}: {where} must be a list of strings, got {v!r}")
    return items


def _int(v: Any, path: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{path}: {where} must be an integer, got {v!r}")
    return v


def _ratio(v: Any, path: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(f"{path}: {where}: ratio {v!r} must be a number in [0, 1)")
    return round(float(v), 6)
