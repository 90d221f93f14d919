"""The one benchmark runner: execute cells of a grid and append one JSON line per cell.

Why one runner: every number in a report comes from the same code path (build the model,
prune, optionally fine-tune, measure, evaluate), so comparisons across models, criteria and
strategies are like for like. The results file is the only product; reports read nothing
else (see `benchmarks.report`).

Per (model, dataset, horizon) group the unpruned model is built once (from a checkpoint,
from pretrained weights, or trained briefly inside the run and cached beside the results
file). Each cell then:

1. prunes a copy (`compress.prune`, calibration = shuffled training batches),
2. fine-tunes it when the cell says so (`compress.finetune`, sparsity kept),
3. measures it (`compress.measure`, threads fixed, one fixed test batch) and
   re-measures the unpruned model on the same batch right before, so that `speedup`
   compares two timings taken moments apart in the same process,
4. evaluates MSE / MAE on the (strided) test split,

and appends a record (see `RECORD_FIELDS`). A cell with an error-free record of the same
key *and* definition (`config.cell_definition`) in the results file is skipped (resume; a
changed definition re-runs the cell, saying which fields changed); a failing cell records
its error and the grid goes on. Before any cell runs, the config is checked
(`benchmarks.validate`), and the results file is checked and repaired after a crash
(`benchmarks.results`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .config import BASELINE, Cell, Config, ModelSpec, cell_definition, cell_key, check, definition_changes
from .results import append, check_out, read_results, repair

__all__ = ["run", "read_results", "done_keys", "RECORD_FIELDS", "TRAIN_HINT"]

RECORD_FIELDS = (
    "model", "family", "size", "dataset", "horizon", "context_length", "criterion", "strategy", "ratio",
    "effective_ratio", "method", "finetuned", "seed", "params", "nonzero_params", "density", "prunable_density",
    "relative_size", "flops", "flops_reduction", "latency_ms", "latency_iqr_ms", "baseline_latency_ms", "speedup",
    "threads", "peak_memory_mb", "mse", "mae", "n_windows", "baseline_mse", "baseline_mae", "test_stride",
    "finetune_epochs", "seconds", "error", "note", "config", "command", "commit", "time", "weights", "definition",
)
#: Where the unpruned model's weights came from (record field "weights") and what its
#: baseline row is called: only pretrained weights evaluated as they are are "zero-shot".
WEIGHTS = {"pretrained": "zero-shot", "trained": "trained baseline", "checkpoint": "trained baseline",
           "untrained": "untrained (random init)"}
TRAIN_HINT = "python benchmarks/train_classic.py"


# --- results file (see benchmarks.results) ------------------------------------------------
def done_keys(path: str) -> set:
    """Keys of the cells that already have an error-free record in `path` (whatever its definition)."""
    return {cell_key(r) for r in read_results(path) if not r.get("error")}


def _append(path: str, record: Dict[str, Any]) -> None:
    append(path, record, default=_json_default)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _commit() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


# --- building the unpruned model ----------------------------------------------------------
def _format_path(template: str, spec: ModelSpec, dataset: str, horizon: int) -> str:
    context = spec.config.get("context_length", "")
    return template.format(model=spec.name, dataset=dataset, horizon=horizon, context=context)


def _config_fields(family: str) -> Optional[set]:
    from compress.models import get_adapter

    cfg_class = getattr(get_adapter(family), "config_class", None)
    if cfg_class is not None and dataclasses.is_dataclass(cfg_class):
        return {f.name for f in dataclasses.fields(cfg_class)}
    return None


def _from_checkpoint(spec: ModelSpec, path: str, horizon: int):
    """A `.pt` file (state_dict or whole model) with its build config in the `.json` beside it."""
    import compress

    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found; make it with: {TRAIN_HINT}")
    obj = None if os.path.isdir(path) else _read_weights(path)
    if obj is None:  # a directory written by Forecaster.save (safetensors + description)
        model = compress.models.load(path if os.sep in path else os.path.join(".", path))
    else:
        meta_path = os.path.splitext(path)[0] + ".json"
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"build config {meta_path} (beside the checkpoint) not found; "
                                    f"make both with: {TRAIN_HINT}")
        with open(meta_path) as f:
            meta = json.load(f)
        family = meta.get("family", spec.family)
        size = meta.get("size", spec.size)
        build = meta.get("config", meta.get("build", meta))
        fields = _config_fields(family)
        if fields is not None:  # keep only real config fields (the json may carry metrics too)
            build = {k: v for k, v in build.items() if k in fields}
        build = {**build, **spec.config}
        model = compress.models.load(family, size=size, **build)
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if obj and all(k.startswith("model.") for k in obj):
            model.load_state_dict(obj)
        else:
            model.model.load_state_dict(obj)
    if getattr(model, "horizon", horizon) != horizon:
        raise ValueError(f"checkpoint {path} forecasts {model.horizon} steps, the cell asks for {horizon}")
    return model


def _read_weights(path: str) -> dict:
    """A state_dict from a `.safetensors` file or a `torch.save`d dict, never by unpickling code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is not a plain state_dict ({type(e).__name__}); whole pickled models "
                         "are not read (unpickling runs code from the file). Save with model.save(dir) or "
                         "torch.save(model.state_dict(), path); convert an old save you trust with "
                         "`python -m compress.models.saving convert DIR`") from None


def build_model(spec: ModelSpec, dataset: str, horizon: int, seed: int, cache_dir: Optional[str],
                log: Callable[[str], None]):
    """The unpruned model of a group: from a checkpoint, pretrained weights, or trained here."""
    import compress

    torch.manual_seed(seed)
    if spec.checkpoint:
        model = _from_checkpoint(spec, _format_path(spec.checkpoint, spec, dataset, horizon), horizon)
        model.eval()
        return model
    overrides = dict(spec.config)
    overrides.setdefault("horizon", horizon)
    fields = _config_fields(spec.family)
    if fields is not None and "n_channels" in fields and "n_channels" not in overrides:
        overrides["n_channels"] = compress.data.load(dataset, 2, 1, "test").n_channels
    model = compress.models.load(spec.family, pretrained=spec.pretrained, size=spec.size, **overrides)
    if spec.train:
        model = _train_cached(model, spec, dataset, horizon, seed, cache_dir, log)
    model.eval()
    return model


def _train_cached(model, spec: ModelSpec, dataset: str, horizon: int, seed: int, cache_dir: Optional[str], log):
    """Train a freshly built model for the benchmark, once; later runs reuse the cached weights."""
    import compress

    settings = dict(spec.train)
    tag = json.dumps({"family": spec.family, "size": spec.size, "config": spec.config, "train": settings}, sort_keys=True)
    stamp = f"{abs(hash_str(tag)) % 10**8:08d}"
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{spec.name}-{dataset}-{model.context_length}-{horizon}-{stamp}.pt")
        if os.path.exists(path):
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log(f"  {spec.name}: reusing trained weights {path}")
            return model
    L = model.context_length
    train = compress.data.load(dataset, L, horizon, "train")
    val = compress.data.load(dataset, L, horizon, "val")
    settings.setdefault("seed", seed)
    settings.setdefault("progress", False)
    settings.setdefault("lr", 1e-3)
    t0 = time.time()
    model = compress.finetune(model, train, val, **settings)
    log(f"  {spec.name}: trained on {dataset} ({settings}) in {time.time() - t0:.0f} s")
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # atomic: parallel workers may train the same group at once
        with open(os.path.splitext(tmp)[0] + ".json", "w") as f:
            json.dump({"family": spec.family, "size": spec.size, "config": model.config, "train": spec.train}, f,
                      indent=2, default=str)
        os.replace(os.path.splitext(tmp)[0] + ".json", os.path.splitext(path)[0] + ".json")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def weights_origin(spec: ModelSpec, model) -> str:
    """"checkpoint", "trained" (inside the run), "pretrained" (the family's weights) or "untrained"."""
    if spec.checkpoint:
        return "checkpoint"
    if spec.train:
        return "trained"
    config = getattr(model, "config", None)
    if spec.pretrained or (isinstance(config, dict) and config.get("pretrained")):
        return "pretrained"
    return "untrained"


def method_label(cell: Cell, weights: Optional[str]) -> str:
    """The record's "method": what was done to which weights (an untrained model says so)."""
    if cell.ratio == 0 and not cell.finetune:
        return WEIGHTS.get(weights, cell.method)
    if weights == "untrained" and not cell.finetune:
        return f"{cell.method} (untrained model)"
    return cell.method


def hash_str(s: str) -> int:
    import hashlib

    return int(hashlib.sha1(s.encode()).hexdigest()[:12], 16)


# --- running -------------------------------------------------------------------------------
def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(config: Config, out: str, command: str = "", cells: Optional[Iterable[Cell]] = None,
        log: Callable[[str], None] = _stderr, cache_dir: Optional[str] = None, *, workers: int = 1,
        executor: Optional[str] = None, address: Optional[str] = None, retries: int = 1) -> List[Dict[str, Any]]:
    """Run the cells of `config` (all of them by default), appending records to `out`.

    Args:
        config: a parsed experiment (`benchmarks.config.load_config`).
        out: the JSONL results file (created, or appended to).
        command: the shell command recorded in every record.
        cells: a subset of cells to run (default: `config.cells`).
        log: where progress lines go (stderr).
        cache_dir: where models trained inside the run are cached (default: `checkpoints/`
            beside `out`).
        workers: parallel worker processes (local pool) or Ray CPUs of a local instance.
        executor: "serial" (this process), "process" (a local pool of `workers`) or "ray";
            default: "process" when workers > 1, else "serial". See `benchmarks.parallel`.
        address: the Ray cluster to join (``ray://host:10001`` or ``auto``); default: start
            a local instance.
        retries: how often a cell whose worker died is retried before it is recorded as
            failed (parallel executors only).

    Returns:
        The records written by this call (skipped cells write none).

    Raises:
        benchmarks.config.ConfigError: `config` has problems (all listed; nothing runs).
        benchmarks.results.ResultsError: `out` is a directory or under a file, or a line
            before its last is unreadable (nothing runs). An unreadable *last* line (a
            crash mid-write) is moved aside with a message and the run goes on.

    Resume: a cell is skipped when `out` has an error-free record of it whose
    ``definition`` (`benchmarks.config.cell_definition`: model, build overrides, training,
    evaluation and fine-tuning settings) equals the config's; a record with another
    definition is stale and its cell runs again (the log names the changed fields; reports
    then use the new record). Records written before definitions were recorded are
    matched on the grid key alone, with a message saying so.

    Example:
        >>> from benchmarks.config import load_config          # doctest: +SKIP
        >>> run(load_config("benchmarks/configs/quick.toml"), "runs/quick/results.jsonl")  # doctest: +SKIP
    """
    check(config)
    check_out(out)
    repair(out, log)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.eval.threads)  # the whole run: on small shared CPUs extra OpenMP threads spin
    try:
        executor = executor or ("process" if workers > 1 else "serial")
        if executor == "serial":
            return _run(config, out, command, cells, log, cache_dir)
        return _run_parallel(config, out, command, cells, log, cache_dir, executor, workers, address, retries)
    finally:
        torch.set_num_threads(threads)


def _spec(config: Config, cell: Cell) -> ModelSpec:
    return config.models.get(cell.model) or ModelSpec(name=cell.model, family=cell.model)


def _plan(config: Config, cells: List[Cell], out: str, log) -> List[Tuple[int, Cell]]:
    """The (index, cell) pairs still to run: no error-free record with the same key and definition."""
    ok: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in read_results(out, log):
        if not r.get("error"):
            ok.setdefault(cell_key(r), []).append(r)
    total, pending, legacy = len(cells), [], 0
    for i, c in enumerate(cells, 1):
        records = ok.get(c.key(_spec(config, c).size, config.seed))
        where = f"[{i}/{total}] {_label(c)}"
        if not records:
            pending.append((i, c))
            continue
        definition = cell_definition(config, c)
        recorded = [r["definition"] for r in records if isinstance(r.get("definition"), dict)]
        if definition in recorded:
            log(f"{where}: done already, skipped")
        elif recorded:
            changed = definition_changes(recorded[-1], definition)
            log(f"{where}: definition changed ({', '.join(changed)}), re-running (the old record stays in "
                f"{out}; reports use the new one)")
            pending.append((i, c))
        else:
            legacy += 1
            log(f"{where}: done already (an older record without its definition: matched on the grid key only), "
                "skipped")
    if legacy:
        log(f"note: {legacy} cell(s) were skipped on records written before the harness recorded cell definitions; "
            f"changes of model, training or evaluation settings since are not detected for them. Delete their lines "
            f"from {out} to re-run them")
    return pending


def _write(out: str, config: Config, cell: Cell, rec: Dict[str, Any]) -> None:
    """Append a cell's record with its definition (what the next resume compares)."""
    rec["definition"] = cell_definition(config, cell)
    _append(out, rec)


def _run(config, out, command, cells, log, cache_dir):
    cells = list(config.cells if cells is None else cells)
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "checkpoints")
    pending = _plan(config, cells, out, log)
    common = dict(config=config.name, command=command, commit=_commit(), seed=config.seed)
    groups: Dict[Tuple[str, str, int], List[Tuple[int, Cell]]] = {}
    for i, c in pending:
        groups.setdefault((c.model, c.dataset, c.horizon), []).append((i, c))
    written: List[Dict[str, Any]] = []
    total = len(cells)
    for (model_name, dataset, horizon), group in groups.items():
        spec = _spec(config, group[0][1])
        try:
            ctx = _GroupContext(config, spec, dataset, horizon, cache_dir, log)
        except Exception as e:  # the model or data could not be built: every cell of the group says why
            msg = _error(e)
            for i, c in group:
                rec = _record(c, spec, common, error=msg, seconds=0.0)
                _write(out, config, c, rec)
                written.append(rec)
                log(f"[{i}/{total}] {_label(c)}: ERROR {msg}")
            continue
        for i, c in group:
            rec = ctx.run_cell(c, common)
            _write(out, config, c, rec)
            written.append(rec)
            log(f"[{i}/{total}] {_label(c)}: {_summary(rec)}")
    return written


def _run_parallel(config, out, command, cells, log, cache_dir, executor, workers, address, retries):
    from .parallel import run_cells

    cells = list(config.cells if cells is None else cells)
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(out)), "checkpoints")
    pending = _plan(config, cells, out, log)
    common = dict(config=config.name, command=command, commit=_commit(), seed=config.seed)
    total = len(cells)
    written: List[Dict[str, Any]] = []
    labels = dict(pending)

    def write(index: int, rec: Dict[str, Any]) -> None:  # the one writer: this process
        _write(out, config, labels[index], rec)
        written.append(rec)
        log(f"[{index}/{total}] {_label(labels[index])}: {_summary(rec)}")

    if pending:
        log(f"{len(pending)} cell(s) to run on {executor} ({workers} worker(s))")
        run_cells(config, pending, common, cache_dir, write, log, executor=executor, workers=workers,
                  address=address, retries=retries)
    return written


class _GroupContext:
    """What all cells of one (model, dataset, horizon) share: the unpruned model and the data."""

    def __init__(self, config: Config, spec: ModelSpec, dataset: str, horizon: int, cache_dir: str, log):
        import compress
        from compress.measure import measure

        self.config, self.spec, self.dataset, self.horizon, self.log = config, spec, dataset, horizon, log
        ev = config.eval
        self.base = build_model(spec, dataset, horizon, config.seed, cache_dir, log)
        self.weights = weights_origin(spec, self.base)
        L = self.base.context_length
        if getattr(self.base, "horizon", horizon) != horizon:
            raise ValueError(f"{spec.name} forecasts {self.base.horizon} steps, the grid asks for {horizon}")
        self.test = compress.data.load(dataset, L, horizon, "test", stride=max(1, ev.test_stride))
        self.train = compress.data.load(dataset, L, horizon, "train")
        self.calibration = self.train.batches(ev.calibration_batch_size, limit=ev.calibration_batches,
                                              shuffle=True, seed=config.seed)
        self.x = self.test.batches(ev.latency_batch_size, limit=1)[0][0]  # [B, L, C], same for every cell
        self.base_measure = measure(self.base, self.x, latency=False, threads=ev.threads)
        self._base_metrics = None

    def base_metrics(self) -> Dict[str, float]:
        import compress

        if self._base_metrics is None:
            self._base_metrics = compress.evaluate(self.base, self.test, batch_size=self.config.eval.batch_size,
                                                   limit=self.config.eval.test_limit or None)
        return self._base_metrics

    def _interleaved_latency(self, model):
        """(median, IQR) ms of the unpruned and of `model`, timed in alternating rounds on the same batch.

        Alternating rounds (base, model, base, model, ...) share whatever load the machine has,
        so the ratio is fairer than two timings taken minutes apart.
        """
        import statistics

        from compress.measure import measure

        ev = self.config.eval
        rounds = 3
        per = max(1, ev.latency_repeats // rounds)
        base, mine = [], []
        for _ in range(rounds):
            for target, acc in ((self.base, base), (model, mine)):
                t = measure(target, self.x, latency=True, memory=False, repeats=per, threads=ev.threads)
                acc.append((t.latency_ms, t.latency_iqr_ms))
        med = lambda xs: (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs))  # noqa: E731
        return med(base), med(mine)

    def run_cell(self, cell: Cell, common: Dict[str, Any]) -> Dict[str, Any]:
        import compress
        from compress.measure import measure

        ev, ft = self.config.eval, self.config.finetune
        t0 = time.time()
        note = None
        try:
            torch.manual_seed(self.config.seed)
            model, effective = self.base, cell.ratio
            if cell.ratio > 0:
                if cell.strategy == "structured" and cell.ratio > ev.max_structured_ratio:
                    effective = ev.max_structured_ratio
                    note = f"structured ratio capped at {effective} (asked {cell.ratio})"
                model = compress.prune(self.base, cell.criterion, effective, strategy=cell.strategy,
                                       example_inputs=self.x, calibration=self.calibration, scope=ev.scope)
            epochs_run = None
            if cell.finetune:
                val = compress.data.load(self.dataset, self.base.context_length, self.horizon, "val")
                model = compress.finetune(model, self.train, val, epochs=ft.epochs, lr=ft.lr, patience=ft.patience,
                                          batch_size=ft.batch_size, max_train_batches=ft.max_train_batches,
                                          max_val_batches=ft.max_val_batches, seed=self.config.seed, progress=False)
                history = getattr(model, "finetune_history", None) or []  # entry 0 is the check before training
                epochs_run = max(0, len(history) - 1) if history else None
            model.eval()
            m = measure(model, self.x, latency=False, threads=ev.threads)
            base_ms, model_ms = self._interleaved_latency(model)
            metrics = compress.evaluate(model, self.test, batch_size=ev.batch_size, limit=ev.test_limit or None)
            base_metrics = metrics if (cell.ratio == 0 and not cell.finetune) else self.base_metrics()
            bm = self.base_measure
            return _record(
                cell, self.spec, common, weights=self.weights, method=method_label(cell, self.weights),
                context_length=self.base.context_length, effective_ratio=effective,
                params=m.params, nonzero_params=m.nonzero_params, density=m.density,
                prunable_density=m.prunable_density, relative_size=m.nonzero_params / bm.params,
                flops=m.flops, flops_reduction=(bm.flops / m.flops) if m.flops else None,
                latency_ms=model_ms[0], latency_iqr_ms=model_ms[1], baseline_latency_ms=base_ms[0],
                speedup=base_ms[0] / model_ms[0], threads=ev.threads,
                peak_memory_mb=m.peak_memory_mb, mse=metrics["mse"], mae=metrics["mae"],
                n_windows=metrics["n_windows"], baseline_mse=base_metrics["mse"], baseline_mae=base_metrics["mae"],
                test_stride=ev.test_stride, finetune_epochs=epochs_run, note=note,
                seconds=round(time.time() - t0, 2), error=None)
        except Exception as e:
            return _record(cell, self.spec, common, weights=self.weights, method=method_label(cell, self.weights),
                           context_length=self.base.context_length, note=note,
                           test_stride=ev.test_stride, seconds=round(time.time() - t0, 2), error=_error(e))


def _record(cell: Cell, spec: ModelSpec, common: Dict[str, Any], **values) -> Dict[str, Any]:
    rec = {k: None for k in RECORD_FIELDS}
    rec.update(model=cell.model, family=spec.family, size=spec.size, dataset=cell.dataset, horizon=cell.horizon,
               criterion=cell.criterion, strategy=cell.strategy, ratio=cell.ratio, method=cell.method,
               finetuned=cell.finetune)
    rec.update(common)
    rec.update(values)
    rec["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return rec


def _error(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    loc = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {e}{loc}"


def _label(c: Cell) -> str:
    if c.ratio == 0 and (c.criterion, c.strategy) == BASELINE:
        what = "baseline" + (" +finetune" if c.finetune else "")
    else:
        what = f"{c.criterion} {c.strategy} r={c.ratio:.3f}" + (" +finetune" if c.finetune else "")
    return f"{c.model} {c.dataset} H{c.horizon} {what}"


def _summary(r: Dict[str, Any]) -> str:
    if r.get("error"):
        return f"ERROR {r['error']}"
    d = (r["mse"] / r["baseline_mse"] - 1) * 100 if r.get("baseline_mse") else 0.0
    return (f"mse {r['mse']:.4f} ({d:+.1f}%), size x{r['relative_size']:.2f}, "
            f"FLOPs /{r['flops_reduction']:.2f}, speedup x{r['speedup']:.2f} ({r['seconds']:.1f} s)")
