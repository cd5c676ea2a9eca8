"""Does trial ranking pick a better student than the FLOPs rule? Digits (1x8x8) or mnist5k (1x28x28).

1. Train a teacher (resnet8x4, CE; or `--teacher PATH`, a kdcompress checkpoint) and measure the candidate ladder once (the latency cache of `select`).
2. Budgets: `--budgets` log-spaced midpoints between the fastest and the slowest candidate's p50.
3. Train every candidate that fits any budget to the end (kd preset, `--epochs`) and score it on the TEST
   split (its best-validation checkpoint). A candidate's accuracy does not depend on the budget, so each is
   trained once.
4. Per budget: the best achievable test accuracy among the fits; the FLOPs rule's choice (most capable fit);
   the trial rule's choice (select/trial.py: successive halving over the top `--trial-top` fits within
   25% of `--epochs`, scored by validation accuracy; trials memoised per (candidate, epochs)).
   A rule scores a budget when its choice is within 0.5 point of the best.

    python benchmarks/select_quality.py [--quick]
    python benchmarks/select_quality.py --data mnist5k --quick --teacher /path/teacher.pt
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
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
    args = ap.parse_args()
    epochs = args.epochs or (8 if args.quick else 20)
    names = QUICK if args.quick else CANDIDATES

    import torch

    torch.set_num_threads(1)
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
    from kdcompress.select.trial import successive_halving, trial_pool
    from kdcompress.teacher import load_teacher
    from kdcompress.train import train

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
    log(f"ladder measured: {lo:.4f} .. {hi:.4f} ms")
    kd = losses.load_checked_preset("kd", [f"train.epochs={epochs}"])
    memo: dict[tuple[str, int], tuple[float, float]] = {}

    def run(name: str, n_epochs: int) -> tuple[float, float]:
        """(best validation accuracy, test accuracy of that checkpoint) after n_epochs of kd."""
        if (name, n_epochs) not in memo:
            preset = replace(kd, train=replace(kd.train, epochs=n_epochs))
            rd = RunDir(tmp / "runs" / f"{name}-e{n_epochs}")
            fp = {"arch": name, "epochs": n_epochs, "preset": preset_to_json(preset)}
            res = train(arch=name, splits=splits, spec=spec, preset=preset, teacher=teacher, run=rd,
                        device=torch.device("cpu"), fingerprint=fp, console=quiet,
                        make_student=lambda: students.build_student(name, 10, spec),
                        make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
            model, _ = students.load_checkpoint(rd.student)
            test = accuracy(predict(model, splits.test, spec, torch.device("cpu")), splits.test.y)
            memo[(name, n_epochs)] = (res.best_val_accuracy, test)
            log(f"{name} {n_epochs} epoch(s): val {res.best_val_accuracy:.4f} test {test:.4f}")
        return memo[(name, n_epochs)]

    rows, refused = [], []
    for b in budgets:
        try:
            sel = select(num_classes=10, spec=spec, budget=Budget(b), runtime=RuntimeConfig(), names=names)
        except BudgetError as e:  # every screened fit failed its confirmation on the shipping graph
            refused.append((b, e.message))
            continue
        fits = [c.name for c in sel.candidates if c.fits]
        full = {n: run(n, epochs)[1] for n in fits}
        best = max(full.values())
        pool = trial_pool(sel, args.trial_top)
        winner, _ = successive_halving(pool, int(args.trial_budget * epochs), lambda n, e: run(n, e)[0])
        trial_choice = (winner or sel.chosen).name
        rows.append((b, len(fits), best, sel.chosen.name, full[sel.chosen.name], trial_choice, full[trial_choice]))

    print("\n| budget ms | fits | best test acc | FLOPs rule | its acc | trial rule | its acc |")
    print("|---:|---:|---:|---|---:|---|---:|")
    for b, n, best, fc, fa, tc, ta in rows:
        print(f"| {b:.4f} | {n} | {100 * best:.2f} | {fc} | {100 * fa:.2f}{' *' if best - fa <= 0.005 else ''} | "
              f"{tc} | {100 * ta:.2f}{' *' if best - ta <= 0.005 else ''} |")
    n_flops = sum(best - fa <= 0.005 for _, _, best, _, fa, _, _ in rows)
    n_trial = sum(best - ta <= 0.005 for _, _, best, _, _, _, ta in rows)
    print(f"\nwithin 0.5 point of the best (*): trial rule {n_trial}/{len(rows)}, FLOPs rule {n_flops}/{len(rows)} "
          f"(goal for trial: >= 7/8); main training {epochs} epochs, trial budget {args.trial_budget:g} x epochs, "
          f"top {args.trial_top}; data {args.data}")
    for b, msg in refused:
        print(f"refused at budget {b:.4f} ms (exit 4, not scored): {msg}")
    fp = machine_fingerprint()
    print(f"machine: {fp['cpu']}, {fp['cpus']} usable CPUs, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f} (shared); {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; "
          f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
