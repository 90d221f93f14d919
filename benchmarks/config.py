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

Validation: `parse_config` collects every problem of the file (shape here, meaning in
`benchmarks.validate`) and raises one `ConfigError` listing them all. `cell_definition` is
what a cell's result depends on beyond its grid key; results records carry it, and resume
compares it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ConfigError", "Config", "ModelSpec", "Cell", "EvalSettings", "load_config", "parse_config", "check",
           "cell_definition"]


class ConfigError(ValueError):
    """A config that cannot be run; the message lists every problem, each naming its key and the fix.

    Attributes:
        problems: the problems, one string each (also in the message, one per line).
    """

    def __init__(self, message: str, problems: Optional[List[str]] = None):
        super().__init__(message)
        self.problems = list(problems or [message])

    @classmethod
    def of(cls, path: str, problems: List[str]) -> "ConfigError":
        if len(problems) == 1:
            return cls(f"{path}: {problems[0]}", problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        return cls(f"{path}: {len(problems)} problems (nothing was run; fix them all, then run again):\n{lines}",
                   problems)


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


def load_config(path: str) -> Config:
    """Read and validate a `.toml` or `.json` experiment config.

    Raises:
        ConfigError: the file is missing or does not parse, or (see `parse_config`) has
            problems: all of them in one message, each naming the file and the key.

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
    """Validate a config dict (already parsed from TOML/JSON) and expand its grids into cells.

    Raises:
        ConfigError: listing *every* problem found, not only the first: unknown keys, ill-typed
            values, bad ranges (ratio outside [0, 1), horizon or epochs below 1, ...) and names
            the registries do not know (model family, criterion, strategy, dataset; see
            `benchmarks.validate`), each with the valid choices.
    """
    if not isinstance(raw, dict):
        raise ConfigError.of(path, ["the top level must be a table/object"])
    p: List[str] = []  # the problems, in file order
    _unknown(raw, _TOP_KEYS, p, "top level")
    seed = _int(raw.get("seed", 0), p, "seed")
    ev = _settings(EvalSettings, raw.get("eval", {}), p, "eval")
    ft = _settings(FinetuneSettings, raw.get("finetune", {}), p, "finetune")

    grids = raw.get("grid")
    if grids is None:
        p.append("no [[grid]] table; a config needs at least one grid (criteria, strategies, ratios)")
        grids = []
    if isinstance(grids, dict):
        grids = [grids]
    if not isinstance(grids, list):
        p.append(f"grid must be a list of tables ([[grid]]), got {grids!r}")
        grids = []
    models_raw = raw.get("models", [])
    if not isinstance(models_raw, (list, dict)):
        p.append(f"models must be a list of families or a table of [models.NAME] tables, got {models_raw!r}")
        models_raw = []
    default_models = models_raw if isinstance(models_raw, list) else list(models_raw)
    model_tables = models_raw if isinstance(models_raw, dict) else {}

    cells: List[Cell] = []
    used: List[str] = []
    for i, g in enumerate(grids):
        where = f"grid[{i}]"
        if not isinstance(g, dict):
            p.append(f"{where} must be a table")
            continue
        _unknown(g, _GRID_KEYS, p, where)
        models = _str_list(g.get("models", default_models), p, f"{where}.models")
        datasets = _str_list(g.get("datasets", raw.get("datasets")), p, f"{where}.datasets")
        horizons = [h for h in _list(g.get("horizons", raw.get("horizons")), p, f"{where}.horizons")
                    if _positive(h, p, f"{where}.horizons", "horizon") is not None]
        criteria = _str_list(g.get("criteria"), p, f"{where}.criteria")
        strategies = _str_list(g.get("strategies", ["structured"]), p, f"{where}.strategies")
        ratios = [r for r in (_ratio(r, p, f"{where}.ratios") for r in _list(g.get("ratios"), p, f"{where}.ratios"))
                  if r is not None]
        finetunes = g.get("finetune", [False])
        finetunes = finetunes if isinstance(finetunes, list) else [finetunes]
        if not all(isinstance(f, bool) for f in finetunes):
            p.append(f"{where}.finetune must be true/false or a list of them, got {g.get('finetune')!r}")
            finetunes = [f for f in finetunes if isinstance(f, bool)]
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
            p.append(f"models.{name} must be a table")
            table = {}
        _unknown(table, _MODEL_KEYS, p, f"models.{name}")
        for key, what in (("config", "build overrides"), ("train", "finetune settings")):
            if table.get(key) is not None and not isinstance(table[key], dict):
                p.append(f"models.{name}.{key} must be a table of {what}, got {table[key]!r}")
                table = {k: v for k, v in table.items() if k != key}
        for key in ("family", "size", "pretrained", "checkpoint"):
            if table.get(key) is not None and not isinstance(table[key], str):
                p.append(f"models.{name}.{key} must be a string, got {table[key]!r}")
        specs[name] = ModelSpec(name=name, family=str(table.get("family", name)), size=str(table.get("size", "small")),
                                pretrained=table.get("pretrained"), checkpoint=table.get("checkpoint"),
                                config=dict(table.get("config") or {}), train=table.get("train"))
    name = str(raw.get("name") or (os.path.splitext(os.path.basename(path))[0] if path else "experiment"))
    cfg = Config(name=name, models=specs, cells=cells, eval=ev, finetune=ft, seed=seed if seed is not None else 0,
                 path=path)
    from .validate import check_config

    p += check_config(cfg)
    if p:
        raise ConfigError.of(path, list(dict.fromkeys(p)))
    return cfg


def check(config: Config, path: Optional[str] = None) -> None:
    """Raise one `ConfigError` listing every problem of `config` (one built in code, too)."""
    from .validate import check_config

    problems = check_config(config)
    if problems:
        raise ConfigError.of(path or config.path or config.name, problems)


def cell_definition(config: Config, cell: Cell) -> Dict[str, Any]:
    """Everything a cell's result depends on beyond its key: what resume compares.

    The model (family, size, weights, build overrides, training inside the run), the
    evaluation settings and, for a fine-tuned cell, the fine-tuning settings. A results
    record carries it as ``definition``; a record whose definition differs from the
    config's is stale (its cell is re-run). As plain JSON values, so that a definition read
    back from a results file compares equal to a fresh one.
    """
    spec = config.models.get(cell.model) or ModelSpec(name=cell.model, family=cell.model)
    d: Dict[str, Any] = {
        "model": {"family": spec.family, "size": spec.size, "pretrained": spec.pretrained,
                  "checkpoint": spec.checkpoint, "config": dict(spec.config),
                  "train": None if spec.train is None else dict(spec.train)},
        "eval": dataclasses.asdict(config.eval),
    }
    if cell.finetune:
        d["finetune"] = dataclasses.asdict(config.finetune)
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def definition_changes(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted names of the fields that differ between two definitions (``model.config.d_model``)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, _MISSING), new.get(k, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            out += definition_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


_MISSING = object()


# --- validation helpers: each appends its problems to `p` and returns a usable value -----
def _unknown(table: dict, allowed: set, p: List[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        hints = "".join(f" ({k!r}: did you mean {m[0]!r}?)" for k in extra
                        for m in [difflib.get_close_matches(k, sorted(allowed), n=1)] if m)
        p.append(f"unknown key(s) {extra} in {where}{hints}; allowed: {sorted(allowed)}")


def _settings(cls, table: Any, p: List[str], where: str):
    """A settings dataclass from a table: types checked here, ranges in `benchmarks.validate`."""
    obj = cls()
    if not isinstance(table, dict):
        p.append(f"[{where}] must be a table")
        return obj
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(table, set(fields), p, f"[{where}]")
    for k, v in table.items():
        if k not in fields:
            continue
        default = getattr(cls(), k)
        if isinstance(default, bool) or (default is not None and not isinstance(default, (int, float, str))):
            ok = isinstance(v, type(default))
        elif isinstance(default, str):
            ok = isinstance(v, str)
        else:  # numbers (int fields also accept 0 / None meaning "no limit" where the default is None)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(v, float):
                ok = False
        if not ok:
            p.append(f"[{where}] {k} = {v!r} should be a {type(default).__name__ if default is not None else 'integer'}")
            continue
        setattr(obj, k, None if (v == 0 and default is None) else v)
    return obj


def _list(v: Any, p: List[str], where: str) -> list:
    if v is None:
        p.append(f"{where} is missing (give it in the grid or at the top level)")
        return []
    if not isinstance(v, list) or not v:
        p.append(f"{where} must be a non-empty list, got {v!r}")
        return []
    return v


def _str_list(v: Any, p: List[str], where: str) -> List[str]:
    items = _list(v, p, where)
    bad = [x for x in items if not isinstance(x, str)]
    if bad:
        p.append(f"{where} must be a list of strings, got {v!r}")
    return [x for x in items if isinstance(x, str)]


def _int(v: Any, p: List[str], where: str) -> Optional[int]:
    if isinstance(v, bool) or not isinstance(v, int):
        p.append(f"{where} must be an integer, got {v!r}")
        return None
    return v


def _positive(v: Any, p: List[str], where: str, what: str) -> Optional[int]:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        p.append(f"{where}: {what} {v!r} must be a positive integer")
        return None
    return v


def _ratio(v: Any, p: List[str], where: str) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        p.append(f"{where}: ratio {v!r} must be a number in [0, 1) (0 is the unpruned baseline)")
        return None
    return round(float(v), 6)
