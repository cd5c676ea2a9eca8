"""Does trial ranking pick a better student than the FLOPs rule? Digits (1x8x8) or mnist5k (1x28x28).

1. Train a teacher (resnet8x4, CE; or `--teacher PATH`, a kdcompress checkpoint) and measure the candidate
   ladder once (the latency cache of `select`).
2. Budgets: `--budgets` log-spaced midpoints between the fastest and the slowest candidate's p50.
3. Train every candidate that fits any budget to the end (kd preset, `--epochs`), once per seed of
   `--seeds`, and score it on the TEST split (its best-validation checkpoint). A candidate's accuracy does
   not depend on the budget, so each (candidate, seed) is trained once. Its accuracy is the mean over seeds.
4. Per budget: the best achievable mean test accuracy among the fits; the FLOPs rule's choice (most capable
   fit); the trial rule's choice (select/trial.py as distill --rank trial runs it: the pool of up to
   `--trial-top` fits, each family's most capable first; successive halving within 25% of the main
   training's time, each candidate's epoch weighed by its cost measured with train.probe; scored by
   validation accuracy; trials memoised per (candidate, epochs, seed)), run once per seed as a pipeline with
   that seed would. Beside it, the rule before 2026-12-01 evening ("old": the top fits by capacity, every
   epoch counted as the FLOPs choice's), on the same memoised trials. A choice scores when its mean
   accuracy is within 0.5 point of the best; a trial rule's score at a budget is the fraction of seeds whose
   choice scores.
5. Regret (best mean - chosen mean, points) of both rules per (budget, seed), and the paired difference
   FLOPs regret - trial regret with a 95% t interval (positive: the trial rule chose better).

With one seed the ground truth is one training run per candidate: on the digits' 360 test images the
candidates are 1-4 images apart, so the 0.5-point criterion is then within one run's noise.

    python benchmarks/select_quality.py [--quick] [--seeds 3] [--json out.json]
    python benchmarks/select_quality.py --data mnist5k --quick --teacher /path/teacher.pt
    python benchmarks/select_quality.py ... --reuse earlier.json --budgets-ms 0.04,0.07  # no retraining

`--reuse` takes the runs of an earlier --json file of the same data, epochs and teacher (its sha256, when
the file records it) instead of training them again; `--budgets-ms` fixes the budgets (an earlier file's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

CANDIDATES = ("tinycnn_w8", "tinycnn_w16", "tinycnn_w32", "resnet8", "resnet14", "resnet20", "resnet32",
              "wrn10_1", "wrn16_1", "vgg8_x0_25", "vgg11_x0_25", "mobilenetv2_x0_25", "shufflenetv2_x0_5")
QUICK = ("tinycnn_w8", "tinycnn_w16", "tinycnn_w32", "resnet8", "resnet14", "vgg8_x0_25", "wrn10_1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="7 candidates, 8 epochs, teacher 8 epochs")
    ap.add_argument("--budgets", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--trial-top", type=int, default=4)
    ap.add_argument("--trial-budget", type=float, default=0.25)
    ap.add_argument("--data", default="digits", help="digits or mnist5k (any built-in 10-class spec)")
    ap.add_argument("--teacher", type=Path, default=None, help="a trained kdcompress teacher (else resnet8x4, CE)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per candidate (0..seeds-1)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run and row here")
    ap.add_argument("--no-margin", action="store_true", help="the trial rule without its one-standard-error "
                    "margin (the rule before 2026-12-01 18:10)")
    ap.add_argument("--wide", action="store_true", help="the trial plan keeps the pool's size and drops rungs "
                    "(select.trial.halving_plan wide=True) instead of shrinking the pool")
    ap.add_argument("--reuse", type=Path, default=None, help="an earlier --json file: its runs are not trained again")
    ap.add_argument("--budgets-ms", default=None, help="comma-separated budgets instead of --budgets from the ladder")
    args = ap.parse_args()
    epochs = args.epochs or (8 if args.quick else 20)
    names = QUICK if args.quick else CANDIDATES

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from presets import paired_stats
    from rich.console import Console

    from kdcompress import losses, students
    from kdcompress.core.config import Budget, RuntimeConfig, preset_to_json
    from kdcompress.core.errors import BudgetError
    from kdcompress.core.infer import accuracy, predict
    from kdcompress.core.runio import RunDir
    from kdcompress.core.system import machine_fingerprint
    from kdcompress.data import load_data
    from kdcompress.pipeline import train_teacher
    from kdcompress.select.search import select
    from kdcompress.select.result import PRECISION_PREFERENCE
    from kdcompress.select.trial import halving_plan, successive_halving, trial_pool
    from kdcompress.teacher import load_teacher
    from kdcompress.train import train
    from kdcompress.train.probe import epoch_seconds

    quiet = Console(stderr=True, quiet=True)
    tmp = Path(tempfile.mkdtemp(prefix="kdc-quality-"))
    os.environ.setdefault("KDCOMPRESS_CACHE", str(tmp / "cache"))
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    if args.teacher is None:
        ce = losses.load_checked_preset("ce", [f"train.epochs={8 if args.quick else 15}", "train.schedule=cosine"])
        train_teacher(data=args.data, arch="resnet8x4", preset=ce, out=tmp / "teacher.pt", device="cpu", console=quiet)
    teacher = load_teacher(args.teacher or tmp / "teacher.pt")
    spec = teacher.input_spec
    splits = load_data(args.data, spec)
    log(f"teacher ready; data {args.data}, input {spec.shape}")
    ladder = select(num_classes=10, spec=spec, budget=Budget(None), runtime=RuntimeConfig(), names=names)
    lat = {c.name: c.latency.p50 for c in ladder.candidates}
    lo, hi = min(lat.values()), max(lat.values())
    budgets = [round(lo * (hi / lo) ** ((i + 0.5) / args.budgets), 5) for i in range(args.budgets)]
    if args.budgets_ms:
        budgets = [float(b) for b in args.budgets_ms.split(",")]
    log(f"ladder measured: {lo:.4f} .. {hi:.4f} ms")
    kd = losses.load_checked_preset("kd", [f"train.epochs={epochs}"])
    memo: dict[tuple[str, int, int], tuple[float, float]] = {}
    seeds = list(range(args.seeds))
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        if ((old["data"], old["epochs"]) != (args.data, epochs)
                or old.get("teacher_sha256", teacher.sha256) != teacher.sha256):
            raise SystemExit(f"--reuse {args.reuse}: another data set, epoch count or teacher")
        memo.update({(r["name"], r["epochs"], r["seed"]): (r["val"], r["test"]) for r in old["runs"]})
        log(f"reusing {len(memo)} runs of {args.reuse}"
            + ("" if "teacher_sha256" in old else " (the file does not record its teacher: same file on your word)"))
    seconds: dict[str, float] = {}

    def cost(name: str) -> float:
        """Seconds of one kd epoch of `name` here (train.probe, as the pipeline weighs a trial)."""
        if name not in seconds:
            seconds[name] = epoch_seconds(lambda: students.build_student(name, 10, spec), spec,
                                          batch_size=kd.train.batch_size, n_train=len(splits.train), num_classes=10,
                                          teacher=teacher.model, device=torch.device("cpu"))
            log(f"{name}: {seconds[name]:.2f} s an epoch")
        return seconds[name]

    def old_pool(sel, top: int):  # the rule before: the top fits by capacity, one entry per student
        ranked = sorted((c for c in sel.candidates if c.fits), key=lambda c: (c.flops, c.params,
                        PRECISION_PREFERENCE[c.precision]), reverse=True)
        out: list = []
        for c in ranked:
            if c.name not in {o.name for o in out}:
                out.append(c)
        return out[:top]

    def run(name: str, n_epochs: int, seed: int) -> tuple[float, float]:
        """(best validation accuracy, test accuracy of that checkpoint) after n_epochs of kd."""
        if (name, n_epochs, seed) not in memo:
            preset = replace(kd, train=replace(kd.train, epochs=n_epochs, seed=seed))
            rd = RunDir(tmp / "runs" / f"{name}-e{n_epochs}-s{seed}")
            fp = {"arch": name, "epochs": n_epochs, "seed": seed, "preset": preset_to_json(preset)}
            res = train(arch=name, splits=splits, spec=spec, preset=preset, teacher=teacher, run=rd,
                        device=torch.device("cpu"), fingerprint=fp, console=quiet,
                        make_student=lambda: students.build_student(name, 10, spec),
                        make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
            model, _ = students.load_checkpoint(rd.student)
            test = accuracy(predict(model, splits.test, spec, torch.device("cpu")), splits.test.y)
            memo[(name, n_epochs, seed)] = (res.best_val_accuracy, test)
            log(f"{name} {n_epochs} epoch(s) seed {seed}: val {res.best_val_accuracy:.4f} test {test:.4f}")
        return memo[(name, n_epochs, seed)]

    def mean_test(name: str) -> float:
        return statistics.mean(run(name, epochs, s)[1] for s in seeds)

    rows, refused = [], []
    for b in budgets:
        try:
            sel = select(num_classes=10, spec=spec, budget=Budget(b), runtime=RuntimeConfig(), names=names)
        except BudgetError as e:  # every screened fit failed its confirmation on the shipping graph
            refused.append((b, e.message))
            continue
        fits = [c.name for c in sel.candidates if c.fits]
        full = {n: mean_test(n) for n in fits}
        best = max(full.values())
        pool = trial_pool(sel, args.trial_top)
        costs = [cost(c.name) / cost(sel.chosen.name) for c in pool]
        budget_epochs = args.trial_budget * epochs
        n_val = None if args.no_margin else len(splits.val)
        trial, old_rule = [], []
        for seed in seeds:
            winner, _ = successive_halving(pool, budget_epochs, lambda n, e, s=seed: run(n, e, s)[0], n_val=n_val,
                                           costs=costs, wide=args.wide)
            trial.append((winner or sel.chosen).name)
            winner, _ = successive_halving(old_pool(sel, args.trial_top), int(budget_epochs),
                                           lambda n, e, s=seed: run(n, e, s)[0], n_val=n_val)
            old_rule.append((winner or sel.chosen).name)
        rows.append({"budget_ms": b, "fits": fits, "best": best, "best_name": max(full, key=full.get),
                     "flops_choice": sel.chosen.name, "flops_acc": full[sel.chosen.name],
                     "pool": [c.name for c in pool], "costs": [round(c, 3) for c in costs],
                     "plan": halving_plan(costs, budget_epochs, args.wide),
                     "trial_choices": trial, "trial_accs": [full[n] for n in trial],
                     "old_choices": old_rule, "old_accs": [full[n] for n in old_rule]})

    def ok(best: float, acc: float) -> bool:
        return best - acc <= 0.005

    sd = {n: statistics.stdev([memo[(n, epochs, s)][1] for s in seeds]) if len(seeds) > 1 else 0.0
          for n in {n for r in rows for n in r["fits"]}}
    def cell(names_: list[str], accs: list[float], best: float) -> str:
        shown = ", ".join(names_) if len(set(names_)) > 1 else names_[0]
        return f"{shown} | " + ", ".join(f"{100 * a:.2f}{' *' if ok(best, a) else ''}" for a in accs)

    print("\n| budget ms | fits | best mean test acc | FLOPs rule | its acc | trial pool (plan) "
          "| trial rule (per seed) | its acc | old trial rule | its acc |")
    print("|---:|---:|---:|---|---:|---|---|---:|---|---:|")
    for r in rows:
        plan = " ".join(f"{c}x{e}" for c, e in r["plan"]) or "none"
        print(f"| {r['budget_ms']:.4f} | {len(r['fits'])} | {100 * r['best']:.2f} ({r['best_name']}, sd "
              f"{100 * sd[r['best_name']]:.2f}) | {r['flops_choice']} | {100 * r['flops_acc']:.2f}"
              f"{' *' if ok(r['best'], r['flops_acc']) else ''} | {', '.join(r['pool'])} ({plan}) | "
              f"{cell(r['trial_choices'], r['trial_accs'], r['best'])} | "
              f"{cell(r['old_choices'], r['old_accs'], r['best'])} |")
    n_flops = sum(ok(r["best"], r["flops_acc"]) for r in rows)
    n_trial = sum(statistics.mean(ok(r["best"], a) for a in r["trial_accs"]) for r in rows)
    n_old = sum(statistics.mean(ok(r["best"], a) for a in r["old_accs"]) for r in rows)
    regret_o = [100 * (r["best"] - a) for r in rows for a in r["old_accs"]]
    regret_f = [100 * (r["best"] - r["flops_acc"]) for r in rows for _ in seeds]
    regret_t = [100 * (r["best"] - a) for r in rows for a in r["trial_accs"]]
    diff, lo_ci, hi_ci = paired_stats([f - t for f, t in zip(regret_f, regret_t, strict=True)])
    print(f"\nwithin 0.5 point of the best mean (*): trial rule {n_trial:.2f}/{len(rows)} (mean over {len(seeds)} "
          f"seed(s)), FLOPs rule {n_flops}/{len(rows)}, old trial rule {n_old:.2f}/{len(rows)} "
          f"(goal for trial: >= 7/8); "
          f"main training {epochs} epochs, "
          f"trial budget {args.trial_budget:g} x epochs, top {args.trial_top}{', wide plan' if args.wide else ''}; "
          f"data {args.data}; "
          f"{len(seeds)} seed(s) per candidate")
    print(f"mean regret (points below the best mean): trial rule {statistics.mean(regret_t):.2f}, FLOPs rule "
          f"{statistics.mean(regret_f):.2f}, old trial rule {statistics.mean(regret_o):.2f}; "
          f"FLOPs - trial {diff:+.2f} [{lo_ci:+.2f}, {hi_ci:+.2f}] "
          f"(95% t interval over {len(regret_t)} budget x seed pairs; budgets share candidates, so the pairs "
          f"are not independent and the interval is optimistic)")
    for b, msg in refused:
        print(f"refused at budget {b:.4f} ms (exit 4, not scored): {msg}")
    if args.json:
        runs = [{"name": n, "epochs": e, "seed": s_, "val": v, "test": t} for (n, e, s_), (v, t) in memo.items()]
        args.json.write_text(json.dumps({"data": args.data, "epochs": epochs, "seeds": seeds, "rows": rows,
                                         "teacher_sha256": teacher.sha256, "wide": args.wide,
                                         "val_images": len(splits.val),
                                         "epoch_seconds": seconds,
                                         "refused": [[b, m] for b, m in refused], "runs": runs}, indent=1) + "\n")
    fp = machine_fingerprint()
    print(f"machine: {fp['cpu']}, {fp['cpus']} usable CPUs, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f} (shared); {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; "
          f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
