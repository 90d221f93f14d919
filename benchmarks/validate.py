"""Checks of a whole experiment against the toolkit's registries, before any cell runs.

Why a module of its own: `config.py` checks the shape of a file (keys, types); this one
checks its meaning (is `transformr` a model family? is `magnitud` a criterion? is a
horizon of 0 or a fine-tuning `epochs = 0` runnable?) against the registries the runner
will call (`compress.models.available()`, `compress.criteria.available()`,
`compress.strategies.available()`, `compress.data`), so the answer is the same as the
run's would be, only hours earlier. Every check returns *all* its problems as strings
(each naming the value, where it is, and the valid choices); `config.ConfigError` turns
the list into one message. The single-cell command line (`run --model ...`) and
`runner.run` use the same checks, so a config built in code is held to the same rules.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import string
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["check_config", "LABELS", "UNSUPPORTED_STRATEGIES", "harness_strategies"]

#: Registered strategies the harness's cells cannot run, and why (the cell gives no validation split).
UNSUPPORTED_STRATEGIES = {
    "progressive": "it stops on a validation loss the harness's cells do not pass; use benchmarks/ptf for it",
}
_CHECKPOINT_FIELDS = {"model", "dataset", "horizon", "context"}


def _close(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def harness_strategies() -> List[str]:
    """The strategies a harness cell can use: the registry's, less `UNSUPPORTED_STRATEGIES`."""
    import compress

    return [s for s in compress.strategies.available() if s not in UNSUPPORTED_STRATEGIES]


def check_family(family: Any, where: str) -> Optional[str]:
    import compress

    families = compress.models.available()
    if isinstance(family, str) and family in families:
        return None
    return (f"{where}: unknown model family {family!r}{_close(family, families)}; registered families: "
            f"{', '.join(families)} (a directory written by save(dir) goes in checkpoint, or --checkpoint)")


def check_criterion(name: Any, where: str) -> Optional[str]:
    import compress

    names = compress.criteria.available()
    if name in names:
        return None
    return f"{where}: unknown criterion {name!r}{_close(name, names)}; registered criteria: {', '.join(names)}"


def check_strategy(name: Any, where: str) -> Optional[str]:
    import compress

    if name in UNSUPPORTED_STRATEGIES:
        return f"{where}: strategy {name!r} cannot run in a harness cell: {UNSUPPORTED_STRATEGIES[name]}"
    names = harness_strategies()
    if name in names:
        return None
    registered = compress.strategies.available()
    return f"{where}: unknown strategy {name!r}{_close(name, registered)}; choose from: {', '.join(names)}"


def check_dataset(name: Any, where: str) -> Optional[str]:
    """A registered dataset name (case-insensitive, aliases too) or the path of an existing CSV file.

    A *named* dataset whose file is not on this machine passes: that is the environment, not the
    config, and each cell then records the loader's error with where to get the file.
    """
    import compress

    names = compress.data.available()
    if not isinstance(name, str) or not name:
        return f"{where}: a dataset is a name ({', '.join(names)}) or a CSV path, got {name!r}"
    if name.lower() in {n.lower() for n in names}:
        return None
    resolve = getattr(getattr(compress.data, "loaders", None), "_resolve", None)
    if resolve is None:  # the loader's own resolver (aliases, paths) is the reference; fall back to names
        return None if os.path.isfile(name) else (
            f"{where}: unknown dataset {name!r}{_close(name, names)}; names: {', '.join(names)}, or a CSV path")
    try:
        resolve(name, None)
    except FileNotFoundError as e:
        if os.sep in name or name.lower().endswith((".csv", ".txt")) or os.path.exists(name):
            return f"{where}: dataset {str(e).splitlines()[0]}"
        return None  # a known alias whose file is missing here: the cells say where to get it
    except (ValueError, TypeError):
        return (f"{where}: unknown dataset {name!r}{_close(name, names)}; names: {', '.join(names)} "
                "(case-insensitive), or the path of a CSV file")
    return None


def config_fields(family: str) -> Optional[set]:
    """The build-config keys of `family` (None when the family does not declare a config dataclass)."""
    from compress.models import get_adapter

    cfg_class = getattr(get_adapter(family), "config_class", None)
    if cfg_class is not None and dataclasses.is_dataclass(cfg_class):
        return {f.name for f in dataclasses.fields(cfg_class)}
    return None


def check_model_config(family: str, config: Dict[str, Any], where: str) -> List[str]:
    fields = config_fields(family)
    if fields is None:
        return []  # the family checks its own keys when it is built (every cell then says so)
    return [f"{where}: {k!r} is not a build setting of {family!r}{_close(k, fields)}; "
            f"its settings: {', '.join(sorted(fields))}" for k in config if k not in fields]


def finetune_options() -> set:
    """Every keyword `compress.finetune` accepts: its named parameters plus `FinetuneConfig`'s fields."""
    import compress

    fn = compress.finetune.finetune
    named = {p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    fields = {f.name for f in dataclasses.fields(compress.finetune.FinetuneConfig)}
    return (named | fields) - {"model", "train", "val", "options", "config", "loss_fn", "trace"}


def check_finetune_values(values: Dict[str, Any], where: str) -> List[str]:
    """Unknown keys and out-of-range values of fine-tuning settings, each on its own.

    The ranges are `compress.finetune.FinetuneConfig`'s (built with one setting at a time,
    so every bad setting is reported, not only the first).
    """
    import compress

    known = finetune_options()
    fields = {f.name for f in dataclasses.fields(compress.finetune.FinetuneConfig)}
    problems = []
    for k, v in values.items():
        if k not in known:
            problems.append(f"{where}: unknown fine-tuning setting {k!r}{_close(k, known)}; "
                            f"settings: {', '.join(sorted(known))}")
        elif k in fields:
            try:
                compress.finetune.FinetuneConfig(**{k: v})
            except (ValueError, TypeError) as e:
                msg = str(e).replace("finetune: ", "")
                head = f"{k}={v!r} "
                problems.append(f"{where} {k} = {v!r} {msg[len(head):] if msg.startswith(head) else '(' + msg + ')'}")
    return problems


def check_checkpoint(template: Any, where: str) -> Optional[str]:
    if template is None:
        return None
    if not isinstance(template, str):
        return f"{where}: a checkpoint is a path (string), got {template!r}"
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        return f"{where}: checkpoint {template!r} is not a valid path template ({e}); write braces as {{{{ }}}}"
    bad = sorted(n for n in names if n not in _CHECKPOINT_FIELDS)
    if bad:
        return (f"{where}: checkpoint {template!r} uses unknown placeholder(s) {bad}; "
                f"placeholders: {', '.join('{' + n + '}' for n in sorted(_CHECKPOINT_FIELDS))}")
    return None


#: [eval] settings: the smallest allowed value (max_structured_ratio and scope apart).
_EVAL_MIN = {"test_stride": 1, "test_limit": 0, "batch_size": 1, "calibration_batches": 1,
             "calibration_batch_size": 1, "latency_batch_size": 1, "latency_repeats": 1, "threads": 1}

#: Where each part of a config is, as the messages name it (`check_config(labels=...)` renames them,
#: e.g. the single-cell command line names its flags).
LABELS = {"family": "models.{name}.family", "config": "models.{name}.config", "train": "models.{name}.train",
          "checkpoint": "models.{name}.checkpoint", "datasets": "datasets", "horizons": "horizons",
          "criteria": "criteria", "strategies": "strategies", "ratios": "ratios", "eval": "[eval] {field} = {value!r}",
          "finetune": "[finetune]", "seed": "seed"}


def check_eval(ev, label: str = LABELS["eval"]) -> List[str]:
    problems = []
    for name, low in _EVAL_MIN.items():
        v = getattr(ev, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            problems.append(f"{label.format(field=name, value=v)} must be an integer >= {low}"
                            + (" (0: all test batches)" if name == "test_limit" else ""))
    r = ev.max_structured_ratio
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
        problems.append(f"{label.format(field='max_structured_ratio', value=r)} must be a number in (0, 1)")
    if ev.scope not in ("layer", "global"):
        problems.append(f"{label.format(field='scope', value=ev.scope)} must be 'layer' or 'global'")
    return problems


def check_config(config, labels: Optional[Dict[str, str]] = None) -> List[str]:
    """Every problem of a parsed `Config` (an empty list: it can run), without duplicates.

    Args:
        config: a `benchmarks.config.Config` (from `parse_config`, or built in code).
        labels: names of the config's parts in the messages, overriding `LABELS` (``{name}``
            is a model's name; ``{field}`` / ``{value}`` an [eval] setting and its value).
    """
    from .config import BASELINE, ModelSpec

    at = {**LABELS, **(labels or {})}
    problems: List[Optional[str]] = []
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        problems.append(f"{at['seed']} = {config.seed!r} must be an integer")
    problems += check_eval(config.eval, at["eval"])
    ft = dataclasses.asdict(config.finetune)
    problems += check_finetune_values({k: v for k, v in ft.items() if v is not None}, at["finetune"])
    for name in dict.fromkeys(c.model for c in config.cells):
        spec = config.models.get(name) or ModelSpec(name=name, family=name)
        bad_family = check_family(spec.family, at["family"].format(name=name))
        problems.append(bad_family)
        if bad_family is None:
            problems += check_model_config(spec.family, spec.config, at["config"].format(name=name))
        if spec.train is not None:
            problems += check_finetune_values(spec.train, at["train"].format(name=name))
        problems.append(check_checkpoint(spec.checkpoint, at["checkpoint"].format(name=name)))
    for d in dict.fromkeys(c.dataset for c in config.cells):
        problems.append(check_dataset(d, at["datasets"]))
    for h in dict.fromkeys(c.horizon for c in config.cells):
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            problems.append(f"{at['horizons']}: horizon {h!r} must be a positive integer (forecast steps)")
    pruned = [c for c in config.cells if (c.criterion, c.strategy) != BASELINE]
    for crit in dict.fromkeys(c.criterion for c in pruned):
        problems.append(check_criterion(crit, at["criteria"]))
    for strat in dict.fromkeys(c.strategy for c in pruned):
        problems.append(check_strategy(strat, at["strategies"]))
    for r in dict.fromkeys(c.ratio for c in config.cells):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            problems.append(f"{at['ratios']}: ratio {r!r} must be a number in [0, 1)")
    return list(dict.fromkeys(p for p in problems if p))
