"""Run a grid's cells in parallel: a local process pool (`--workers N`) or Ray (`--executor ray`).

Why a module of its own: a comparative grid (105 cells per dataset, hundreds with
fine-tuning) outgrows one process, and the serial runner must stay the simple reference.
Both executors keep the runner's guarantees:

* every cell is one task; a worker builds (and caches, per process) the unpruned model of
  the cell's (model, dataset, horizon) group, runs the cell and *returns* its record;
* the parent process is the only writer of the results file (`runner._append`), so there
  are no interleaved lines; a cell already done is never submitted (resume), and each
  pending cell is submitted once, so there are no duplicates;
* a worker that dies mid-cell (killed, out of memory) loses nothing silently: its cell is
  retried up to `retries` times on a fresh worker, then recorded with an error that says
  the worker died (the next `run` retries it, like any failed cell).

Models trained inside the run are cached beside the results file; two workers that start
the same group at once may both train it (the cache file is written atomically), so the
pool hands a worker cells of the group it already holds first.

Ray: `ray.init()` starts a local instance (``num_cpus=workers``) or joins a cluster
(``address``); each cell is a `ray.remote` task with ``max_retries=retries`` (Ray re-runs
a task whose worker process died) and ``num_cpus=eval.threads``.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import Cell, Config, ModelSpec

__all__ = ["EXECUTORS", "run_cells", "run_cell_task", "TEST_KILL_ENV"]

EXECUTORS = ("serial", "process", "ray")
#: Test hook: "LABEL_SUBSTRING[|MARKER_FILE]" makes a worker SIGKILL itself when it starts a
#: cell whose label contains the substring (only once when a marker file is given: the
#: first worker creates it and dies, the retry finds it and runs the cell).
TEST_KILL_ENV = "COMPRESS_BENCH_TEST_KILL"

Pending = Sequence[Tuple[int, Cell]]
Write = Callable[[int, Dict[str, Any]], None]

# --- the task (runs in a worker process) ---------------------------------------------------
_CONTEXTS: Dict[Tuple[str, str, int], Any] = {}  # per worker process: the last group built


def _test_hook(label: str) -> None:
    spec = os.environ.get(TEST_KILL_ENV)
    if not spec:
        return
    needle, _, marker = spec.partition("|")
    if needle not in label:
        return
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # died once already: this is the retry
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def run_cell_task(config: Config, cell: Cell, common: Dict[str, Any], cache_dir: str) -> Dict[str, Any]:
    """Build (or reuse) the cell's group and run the cell; returns its record, writes nothing."""
    import torch

    from . import runner

    torch.set_num_threads(config.eval.threads)
    _test_hook(runner._label(cell))
    spec = config.models.get(cell.model) or ModelSpec(name=cell.model, family=cell.model)
    key = (cell.model, cell.dataset, cell.horizon)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        _CONTEXTS.clear()  # one group's model and data at a time per worker
        try:
            ctx = runner._GroupContext(config, spec, cell.dataset, cell.horizon, cache_dir, runner._stderr)
        except Exception as e:  # the model or data could not be built: this cell says why
            ctx = runner._error(e)
        _CONTEXTS[key] = ctx
    if isinstance(ctx, str):
        return runner._record(cell, spec, common, error=ctx, seconds=0.0)
    return ctx.run_cell(cell, common)


def _worker_main(conn, config: Config, cache_dir: str) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, cell, common = msg
        try:
            rec = run_cell_task(config, cell, common, cache_dir)
        except Exception as e:  # noqa: BLE001 - anything outside run_cell's own handler
            from . import runner

            spec = config.models.get(cell.model) or ModelSpec(name=cell.model, family=cell.model)
            rec = runner._record(cell, spec, common, error=runner._error(e), seconds=0.0)
        conn.send((index, rec))


# --- the dispatch (runs in the parent) -----------------------------------------------------
def run_cells(config: Config, pending: Pending, common: Dict[str, Any], cache_dir: str, write: Write,
              log: Callable[[str], None], executor: str = "process", workers: int = 2,
              address: Optional[str] = None, retries: int = 1) -> None:
    """Run `pending` (index, cell) pairs on `executor`, calling `write(index, record)` in this process."""
    if executor == "process":
        _run_pool(config, pending, common, cache_dir, write, log, workers, retries)
    elif executor == "ray":
        _run_ray(config, pending, common, cache_dir, write, log, workers, address, retries)
    else:
        raise ValueError(f"executor={executor!r}: choose one of {list(EXECUTORS)}")


def _died(cell: Cell, config: Config, common: Dict[str, Any], why: str, attempts: int) -> Dict[str, Any]:
    from . import runner

    spec = config.models.get(cell.model) or ModelSpec(name=cell.model, family=cell.model)
    return runner._record(cell, spec, common, seconds=0.0,
                          error=f"WorkerDied: {why} while running this cell ({attempts} attempt(s)); "
                                "run the same command again to retry it")


def _exit_reason(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            return f"the worker process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the worker process was killed by signal {-code}"
    return f"the worker process exited with code {code}"


class _Worker:
    def __init__(self, mp, config: Config, cache_dir: str):
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_worker_main, args=(child, config, cache_dir), daemon=True)
        self.proc.start()
        child.close()
        self.task: Optional[Tuple[int, Cell]] = None
        self.group: Optional[Tuple[str, str, int]] = None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


def _group(cell: Cell) -> Tuple[str, str, int]:
    return (cell.model, cell.dataset, cell.horizon)


def _pick(queue: "collections.deque", worker: _Worker, busy_groups: set) -> Tuple[int, Cell]:
    """The next cell for `worker`: one of the group it holds, else of a group nobody is on."""
    for preferred in (lambda c: _group(c) == worker.group, lambda c: _group(c) not in busy_groups):
        for item in queue:
            if preferred(item[1]):
                queue.remove(item)
                return item
    return queue.popleft()


def _run_pool(config, pending, common, cache_dir, write, log, workers, retries):
    mp = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    queue = collections.deque(pending)
    attempts: Dict[Cell, int] = collections.Counter()
    pool: List[_Worker] = [_Worker(mp, config, cache_dir) for _ in range(max(1, min(workers, len(queue))))]
    try:
        while queue or any(w.task for w in pool):
            for w in pool:
                if w.task is None and queue:
                    busy = {_group(o.task[1]) for o in pool if o.task is not None}
                    w.task = _pick(queue, w, busy)
                    w.group = _group(w.task[1])
                    w.conn.send((w.task[0], w.task[1], common))
            busy = [w for w in pool if w.task is not None]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                if w.conn.poll():
                    try:
                        index, rec = w.conn.recv()
                    except (EOFError, OSError):
                        pass  # died while sending: handled as a death below
                    else:
                        w.task = None
                        write(index, rec)
                        continue
                if w.proc.is_alive():
                    continue
                index, cell = w.task
                attempts[cell] += 1
                why = _exit_reason(w.proc.exitcode)
                if attempts[cell] <= retries:
                    log(f"[{index}] {why}; retrying the cell on a fresh worker")
                    queue.appendleft((index, cell))
                else:
                    write(index, _died(cell, config, common, why, attempts[cell]))
                w.conn.close()
                pool[i] = _Worker(mp, config, cache_dir)
    finally:
        for w in pool:
            w.stop()


def _run_ray(config, pending, common, cache_dir, write, log, workers, address, retries):
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs the `ray` package: pip install 'compress-tsfm[cluster]' "
                          "(or ./install.sh, which installs it)") from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # workers of a local instance inherit this environment: make this checkout importable
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            parts = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([root, *parts]))
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=True)
        started = True
    try:
        task = ray.remote(max_retries=retries, num_cpus=config.eval.threads)(run_cell_task)
        cfg_ref = ray.put(config)
        refs = {task.remote(cfg_ref, cell, common, cache_dir): (index, cell) for index, cell in pending}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                index, cell = refs.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # WorkerCrashedError after max_retries, or a task error
                    why = f"the Ray task failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                    rec = _died(cell, config, common, why, retries + 1)
                write(index, rec)
    finally:
        if started:
            ray.shutdown()

