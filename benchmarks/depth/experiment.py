"""Issue 10 experiment: depth pruning by layer dominance vs random / first-k / last-k blocks.

    python benchmarks/depth/experiment.py --models patchtst_deep ttm patchtst_pre transformer_e6 crossformer \
        --datasets ETTh1 ETTm1 weather [--out benchmarks/results/depth.jsonl]
    python benchmarks/depth/report.py benchmarks/results/depth            # markdown tables (all *.jsonl there)
    python benchmarks/depth/report.py --plot benchmarks/results/depth     # per-block scores vs real removal loss

Per (model, dataset), horizon 96 for the TSFMs (context 512) and the classic forecasters'
own setting (ETTm1, input 96, horizon 192; they were trained for it):

  block-scores     every dominance measure on the calibration windows, next to the real
                   increase of the validation MSE when each block alone is removed; the
                   Spearman correlation of each measure with it (this picks the default)
  zero-shot        the model as loaded (pretrained / trained)
  finetune         the full model fine-tuned with the realignment budget (the baseline)
  prune            `compress.prune(strategy="layers")` at ratio 0.25 / 0.5 / 0.75 of the
                   blocks, selected by dominance (the default measure), random, first-k,
                   last-k; and keep="auto" (dominance, tolerance 10 % on validation)
  prune-then-finetune  the same models after the realignment fine-tune (--realign-method:
                   full, lora or both, one record each; trainable parameters and training
                   seconds recorded)

LoRA vs full realignment (only the realigned cells, the pruned models rebuilt, not re-recorded):

    python benchmarks/depth/experiment.py --models ttm patchtst_deep --datasets ETTh1 ETTm1 \
        --ratios 0.75 --baselines-at --realign-method full lora --only-realign \
        --out benchmarks/results/depth/realign/lora.jsonl

Everything is sized for a shared 2-core CPU: calibration and validation are a few fixed
batches, realignment is one short epoch (--realign-batches), test windows are strided
(stated per record). Latency: the cell's model and the unpruned model are timed in the same
process, interleaved (--pairs base-then-cell pairs, 1 thread), speedup = the median of the
per-pair ratios. One JSON line per cell; cells already in the file are skipped (realigned
cells are keyed by their realignment method and learning rate).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)
import compress  # noqa: E402
from compress.criteria.dominance import MEASURES, skipping  # noqa: E402
from compress.measure import measure  # noqa: E402
from compress.strategies.layers import model_stacks  # noqa: E402

WEIGHTS = os.path.join(REPO, "compress", "models", "weights")
CKPT = os.path.join(REPO, "benchmarks", "checkpoints")
CLASSIC = {"transformer_e6": ("transformer", "transformer-e6-ETTm1-96-192"),
           "crossformer": ("crossformer", "crossformer-ETTm1-96-192"),
           "transformer": ("transformer", "transformer-ETTm1-96-192")}
TEST_STRIDE = {"ETTh1": 32, "ETTm1": 128, "weather": 256}


def setting(name):
    """(context, horizon, datasets it runs on) of a model."""
    if name in CLASSIC:
        return 96, 192, ("ETTm1",)
    return 512, 96, None


def load_model(name, horizon):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "ttm":
            return compress.models.load("ttm")
        if name == "patchtst_pre":
            return compress.models.load("patchtst", pretrained=os.path.join(WEIGHTS, "patchtst-mini-pretrained"),
                                        horizon=horizon)
        if name == "patchtst_deep":
            return compress.models.load("patchtst", pretrained=os.path.join(WEIGHTS, "patchtst-deep-pretrained"),
                                        horizon=horizon)
        if name in CLASSIC:
            family, stem = CLASSIC[name]
            cfg = json.load(open(os.path.join(CKPT, stem + ".json")))["config"]
            return compress.models.load(family, pretrained=os.path.join(CKPT, stem + ".pt"), **cfg)
    raise ValueError(f"unknown model {name!r}")


def records(path):
    if path and os.path.exists(path):
        for line in open(path):
            if line.strip():
                yield json.loads(line)


# The record keys are shared with the (torch-free) report: one definition of what trained a
# record ('full' / 'lora', '@lr=...' off BASE_LR, the --lr default) serves both.
from benchmarks.depth.report import BASE_LR, realign_tag as realign_method  # noqa: E402


def cell_key(r):
    return (r["model"], r["dataset"], r["method"], r.get("select"), r.get("ratio"), r.get("keep"), realign_method(r))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    rho = spearmanr(a, b).statistic
    return float(rho)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def timed(base, model, x, pairs):
    """Sizes (`compress.measure`) and latency of `model` against `base`, interleaved: `pairs`
    times base-then-model, one forward each after a warm-up, 1 thread; speedup = the median of
    the per-pair ratios (a slow drift of the shared machine's load cancels within a pair)."""
    a = measure(base, x, latency=False, memory=False)
    b = measure(model, x, latency=False, memory=False)
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    base.eval(), model.eval()
    try:
        base(x), model(x)  # warm-up
        ta, tb = [], []
        for _ in range(pairs):
            t0 = time.perf_counter()
            base(x)
            t1 = time.perf_counter()
            model(x)
            t2 = time.perf_counter()
            ta.append((t1 - t0) * 1e3)
            tb.append((t2 - t1) * 1e3)
    finally:
        torch.set_num_threads(was)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"params": b.params, "params_base": a.params, "flops": b.flops, "flops_base": a.flops,
            "flops_reduction": a.flops / max(b.flops, 1), "latency_ms": med(tb), "latency_base_ms": med(ta),
            "latency_pairs": pairs, "speedup": med([x_ / y_ for x_, y_ in zip(ta, tb)]),
            "speedup_range": [min(x_ / y_ for x_, y_ in zip(ta, tb)), max(x_ / y_ for x_, y_ in zip(ta, tb))]}


def block_scores(base, cal, val, default_measure):
    """Every measure's per-block scores and the real per-block removal increase (validation MSE)."""
    from compress.strategies.progressive import masked_loss

    out = {"scores": {}, "seconds": {}}
    for m in MEASURES:
        stacks = model_stacks(base)
        t0 = time.perf_counter()
        crit = compress.criteria.get("dominance", measure=m).calibrate(base, cal, groups=stacks)
        out["seconds"][m] = round(time.perf_counter() - t0, 2)
        out["scores"][m] = [float(v) for s in stacks for v in crit.score(s)]
    stacks = model_stacks(base)
    out["blocks"] = [f"{s.path}[{i}]" for s in stacks for i in range(s.n)]
    with torch.no_grad():
        v0 = masked_loss(base, val)
        inc = []
        for s in stacks:
            for i in range(s.n):
                with skipping([(s, i)]):
                    inc.append(masked_loss(base, val) - v0)
    out["val_mse"] = v0
    out["real_val_increase"] = inc
    out["spearman"] = {m: spearman(out["scores"][m], inc) for m in MEASURES}
    return out


STAGES = ("block-scores", "zero-shot", "finetune", "prune", "realign")


def selected(args, stage) -> bool:
    """Whether this run makes the cells of `stage` (--only, --only-realign; default: every stage)."""
    stages = set(args.only or ()) | ({"realign"} if args.only_realign else set())
    return not stages or stage in stages


def run(args):
    done = {cell_key(r) for r in records(args.out) if not r.get("error")}

    def want(stage):
        return selected(args, stage)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/depth/experiment.py " + " ".join(sys.argv[1:])
    for dataset in args.datasets:
        for model_name in args.models:
            context, horizon, only = setting(model_name)
            if only and dataset not in only:
                continue
            train = compress.data.load(dataset, context, horizon, "train")
            val = compress.data.load(dataset, context, horizon, "val")
            test = compress.data.load(dataset, context, horizon, "test", stride=TEST_STRIDE[dataset])
            cal = train.batches(args.batch_size, limit=args.calibration_batches, shuffle=True, seed=0)
            valb = val.batches(args.batch_size, limit=args.validation_batches, shuffle=True, seed=0)
            x = test.batches(args.timing_batch, limit=1)[0][0]  # fixed timing batch [b, L, C]
            ft = dict(epochs=1, lr=args.lr, patience=1, batch_size=args.batch_size,
                      max_train_batches=args.realign_batches, max_val_batches=args.validation_batches,
                      progress=False)
            rft = dict(ft, lr=args.realign_lr if args.realign_lr is not None else args.lr)
            base = load_model(model_name, horizon).eval()

            def emit(rec):
                rec.update(model=model_name, dataset=dataset, horizon=horizon, context_length=context,
                           test_stride=TEST_STRIDE[dataset], command=command)
                print(json.dumps(rec), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")

            def evaluate_cell(model, rec, t0):
                r = compress.evaluate(model, test, batch_size=64)
                rec.update(mse=r["mse"], mae=r["mae"], n_windows=r["n_windows"],
                           **timed(base, model, x, args.pairs), seconds=round(time.perf_counter() - t0, 1))
                return rec

            # 1. per-block scores vs real removal loss
            if want("block-scores") and (model_name, dataset, "block-scores", None, None, None, None) not in done:
                t0 = time.perf_counter()
                bs = block_scores(base, cal, valb, args.measure)
                emit({"method": "block-scores", **bs, "seconds_total": round(time.perf_counter() - t0, 1)})
            # 2. the unpruned model, zero-shot and fine-tuned with the realignment budget
            for method in [m for m in ("zero-shot", "finetune") if want(m)]:
                rec = {"method": method, "strategy": None, "ratio": 0.0, "select": None, "keep": None}
                if method == "finetune":
                    rec["lr"] = ft["lr"]
                if cell_key({"model": model_name, "dataset": dataset, **rec}) in done:
                    continue
                t0 = time.perf_counter()
                try:
                    model = base if method == "zero-shot" else compress.finetune(base, train, val, **ft)
                    n_blocks = sum(s.n for s in model_stacks(model))
                    rec.update(blocks_before=n_blocks, blocks_after=n_blocks)
                    if method == "finetune":
                        rec.update(trainable_params=model.finetune_info["trainable_params"],
                                   train_seconds=round(time.perf_counter() - t0, 1))
                    emit(evaluate_cell(model, rec, t0))
                except Exception as e:  # noqa: BLE001 - a failed cell is recorded, the run goes on
                    emit({**rec, "error": f"{type(e).__name__}: {e}"})
            # 3. depth pruning cells, before and after realignment
            plan = [(sel, r, None) for r in args.ratios for sel in ("dominance", "random", "first", "last")
                    if sel == "dominance" or r in args.baselines_at]
            if not args.no_auto:
                plan.append(("dominance", args.auto_max_ratio, "auto"))
            for sel, ratio, keep in plan:
                realign = keep == "auto" or sel == "dominance" or ratio in args.realign_all_at
                keys = [{"method": "prune", "select": sel, "ratio": ratio, "keep": keep}] if want("prune") else []
                keys += [{"method": "prune-then-finetune", "select": sel, "ratio": ratio, "keep": keep,
                          "realign": {"method": rm, "lr": rft["lr"]}}
                         for rm in (args.realign_method if realign and want("realign") else ())]
                todo = [k for k in keys if cell_key({"model": model_name, "dataset": dataset, **k}) not in done]
                if not todo:
                    continue
                t0 = time.perf_counter()
                crit = (compress.criteria.get("dominance", measure=args.measure) if sel == "dominance"
                        else compress.criteria.get("random", seed=0))
                options = {"select": sel if sel in ("first", "last") else "score"}
                if keep == "auto":
                    options.update(keep="auto", tolerance=args.tolerance)
                common = {"strategy": "layers", "ratio": ratio, "select": sel, "keep": keep,
                          "measure": args.measure if sel == "dominance" else None}
                try:
                    pruned = compress.prune(base, crit, ratio=ratio, strategy="layers", calibration=cal,
                                            validation=valb, example_inputs=x, options=options).eval()
                    pr = pruned.compress_pruning[-1]
                    info = {"blocks_before": pr["blocks_before"], "blocks_after": pr["blocks_after"],
                            "removed": {p: s["removed"] for p, s in pr["stacks"].items() if s["removed"]},
                            **({"auto": pr["auto"]} if "auto" in pr else {})}
                    for k in todo:
                        if k["method"] == "prune":
                            emit(evaluate_cell(pruned, {"method": "prune", **common, **info}, t0))
                            continue
                        rm = k["realign"]["method"]
                        t1 = time.perf_counter()
                        extra = {} if rm == "full" else {"method": rm}
                        tuned = compress.finetune(pruned, train, val, **rft, **extra)
                        fi = tuned.finetune_info
                        realigned = dict(rft, method=rm, **({"lora": {kk: fi["lora"].get(kk) for kk in ("rank", "alpha")}}
                                                           if "lora" in fi else {}))
                        emit(evaluate_cell(tuned, {"method": "prune-then-finetune", **common, **info,
                                                   "realign": realigned, "trainable_params": fi["trainable_params"],
                                                   "train_seconds": round(time.perf_counter() - t1, 1)}, t1))
                except Exception as e:  # noqa: BLE001
                    emit({"method": "prune", **common, "error": f"{type(e).__name__}: {e}"})


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["patchtst_deep", "ttm", "patchtst_pre", "transformer_e6",
                                                    "crossformer"])
    ap.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "weather"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--baselines-at", nargs="*", type=float, default=[0.75],
                    help="ratios at which random / first / last are run (dominance runs at every ratio)")
    ap.add_argument("--realign-all-at", nargs="*", type=float, default=[0.75],
                    help="ratios at which random / first / last are realigned too (dominance always is)")
    ap.add_argument("--no-auto", action="store_true", help="skip the keep='auto' cell")
    ap.add_argument("--auto-max-ratio", type=float, default=0.9)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--measure", default="removal", choices=MEASURES)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calibration-batches", type=int, default=2)
    ap.add_argument("--validation-batches", type=int, default=4)
    ap.add_argument("--realign-batches", type=int, default=12)
    ap.add_argument("--lr", type=float, default=BASE_LR)
    ap.add_argument("--realign-lr", type=float, default=None,
                    help="learning rate of the realignment (default: --lr); records at another rate than "
                         f"{BASE_LR:g} are keyed 'METHOD@lr=RATE', so they sit next to the others in one file")
    ap.add_argument("--realign-method", nargs="+", default=["full"], choices=["full", "lora"],
                    help="compress.finetune method(s) of the realignment: 'full', 'lora' (adapters merged after "
                         "training) or both (one record each, the same pruned model, the same budget). The full "
                         "fine-tune baseline stays full; with the same --out, only the missing realigned cells run")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=None,
                    help="run only these kinds of cells (default: all); 'realign' without 'prune' rebuilds the "
                         "pruned models for realignment without recording them again")
    ap.add_argument("--only-realign", action="store_true", help="the same as --only realign")
    ap.add_argument("--pairs", type=int, default=15, help="interleaved base/model timing pairs per cell")
    ap.add_argument("--timing-batch", type=int, default=4, help="windows in the timing batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "depth", "run.jsonl"))
    return ap.parse_args(argv)


def main(argv=None):
    run(parse(argv))


if __name__ == "__main__":
    main()
