"""Does distillation pay? Every preset against the plain student, paired by seed, on one cached teacher.

Protocol (issue 13):
  * one teacher (default resnet8x4, trained once with CE and cached under --cache-dir, keyed by data, arch and
    epochs), one capacity-limited student (default tinycnn_w8, the smallest in the zoo);
  * every preset with the same number of epochs (--epochs), each with its own [train] recipe: LR milestones
    and the recipe's warm-ups scale to that length (core/config.py);
  * for each seed, the plain student (`ce`) and every preset start from the same student initialisation and
    see the same data order (both are functions of train.seed; a preset whose recipe uses another batch size,
    e.g. nd / dkd_nd at 128, sees the same shuffles in other batches); teacher and student see the same
    augmented view of each image;
  * the checkpoint is the best-validation epoch's; test accuracy is reported;
  * per preset: mean test accuracy, the mean paired difference to `ce` with a 95% t confidence interval
    (n-1 degrees of freedom), the fraction of the teacher-minus-plain-student gap it closes, and the
    student's top-1 agreement with the teacher on the test split.

    .venv/bin/python benchmarks/presets.py --data mnist5k --epochs 30 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/presets.py --quick          # digits, 1 epoch, 2 seeds: a smoke run

Prints a markdown table, the machine and the date; `--json PATH` also writes every per-seed number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from kdcompress import losses, students
from kdcompress.core.config import apply_overrides, builtin_preset_names, load_preset
from kdcompress.core.infer import accuracy, predict
from kdcompress.core.runio import RunDir
from kdcompress.core.system import machine_fingerprint
from kdcompress.data.specs import load_data
from kdcompress.pipeline import train_teacher
from kdcompress.teacher.formats import load_teacher
from kdcompress.train.loop import train

QUIET = Console(stderr=True, quiet=True)
QUICK_PRESETS = ("ce", "kd", "kd_ls")
COLUMNS = ("preset", "test acc % (mean ± sd)", "paired diff vs ce, points [95% CI]", "gap closed",
           "agreement with teacher %", "wins / seeds")


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (scipy when present, else a table)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn, a core dependency
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(df, 1.96)


def paired_stats(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, CI low, CI high) of paired differences, 95% t interval; a single pair has an infinite CI."""
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, -math.inf, math.inf
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def cached_teacher(args, cache: Path) -> tuple[Path, dict]:
    """Train the teacher once per (data, arch, epochs); later runs load the cached checkpoint."""
    data = re.sub(r"[^A-Za-z0-9.-]+", "_", args.data).strip("_")  # "fashionmnist:/usr/share/..." is one file name
    path = cache / f"teacher-{data}-{args.teacher_arch}-{args.teacher_epochs}ep.pt"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    ce = apply_overrides(load_preset("ce"), [f"train.epochs={args.teacher_epochs}", "train.schedule=cosine"])
    info = train_teacher(data=args.data, arch=args.teacher_arch, preset=ce, out=path, device=args.device,
                         console=QUIET)
    info_path.write_text(json.dumps(info))
    return path, info


def add_setting_args(ap: argparse.ArgumentParser, epochs: int) -> None:
    """The flags of a short study on one student and one cached teacher (dkd_sweep.py, fm_check.py)."""
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--student", default="tinycnn_w16")
    ap.add_argument("--teacher-arch", default="resnet8x4")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--device", default="cpu", help="where the teacher is trained when it is not cached yet")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "kdcompress-bench")


def load_setting(args):
    """(the cached teacher, trained once if missing, and the data's splits at its input shape)."""
    from kdcompress.data import load_data
    from kdcompress.teacher import load_teacher

    teacher = load_teacher(cached_teacher(args, args.cache_dir)[0])
    return teacher, load_data(args.data, teacher.input_spec)


def run_one(name: str, seed: int, args, splits, teacher, root: Path) -> dict:
    preset = losses.load_checked_preset(name, [f"train.epochs={args.epochs}", f"train.seed={seed}", *args.set])
    run = RunDir(root / f"{name}-{seed}")
    spec = teacher.input_spec
    t0 = time.perf_counter()
    result = train(arch=args.student, splits=splits, spec=spec, preset=preset,
                   teacher=teacher if preset.needs_teacher else None, run=run, device=torch.device(args.device),
                   fingerprint={"bench": name, "seed": seed}, console=QUIET, restart=True,
                   make_student=lambda: students.build_student(args.student, splits.num_classes, spec),
                   make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
    model, _ = students.load_checkpoint(run.student)  # the best-validation epoch's weights
    logits = predict(model, splits.test, spec, torch.device("cpu"))
    return {"preset": name, "seed": seed, "test_acc": accuracy(logits, splits.test.y),
            "pred": logits.argmax(1), "best_epoch": result.best_epoch, "val_acc": result.best_val_accuracy,
            "seconds": time.perf_counter() - t0,
            "warmup": {t.key: t.warmup_epochs for t in preset.terms if t.warmup_epochs}}


def summarise(rows: list[dict], teacher_acc: float, seeds: list[int]) -> list[dict]:
    """Per preset with every seed present (ce first): the paired statistics against ce of the same seed."""
    by = {(r["preset"], r["seed"]): r for r in rows}
    ce = [by[("ce", s)]["test_acc"] for s in seeds]
    gap = teacher_acc - statistics.mean(ce)
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows):
        if any((name, s) not in by for s in seeds):
            continue  # an interrupted grid: only complete presets are compared
        accs = [by[(name, s)]["test_acc"] for s in seeds]
        diffs = [a - c for a, c in zip(accs, ce, strict=True)]
        m, lo, hi = paired_stats(diffs)
        agree = [by[(name, s)]["agreement"] for s in seeds]
        out.append({"preset": name, "mean": statistics.mean(accs),
                    "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "diff": m, "lo": lo, "hi": hi,
                    "gap_closed": m / gap if gap > 0 else math.nan, "agreement": statistics.mean(agree),
                    "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "n": len(seeds),
                    "seconds": statistics.mean(by[(name, s)]["seconds"] for s in seeds),
                    "warmup": by[(name, seeds[0])]["warmup"]})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " | mean run s | effective warm-up |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for r in summary:
        ci = "" if r["preset"] == "ce" else f"{100 * r['diff']:+.2f} [{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}]"
        gap = "" if r["preset"] == "ce" or math.isnan(r["gap_closed"]) else f"{100 * r['gap_closed']:+.0f}%"
        wins = "" if r["preset"] == "ce" else f"{r['wins']} (ties {r['ties']}) / {r['n']}"
        warm = ", ".join(f"{k} {v}" for k, v in r["warmup"].items()) or "none"
        lines.append(f"| {r['preset']} | {100 * r['mean']:.2f} ± {100 * r['sd']:.2f} | {ci} | {gap} | "
                     f"{100 * r['agreement']:.2f} | {wins} | {r['seconds']:.0f} | {warm} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--presets", nargs="+", default=None, help="default: every built-in preset")
    ap.add_argument("--student", default="tinycnn_w8")
    ap.add_argument("--teacher-arch", default="resnet8x4")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--set", nargs="*", default=[], help="extra --set overrides for every preset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "kdcompress-bench")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-seed numbers here")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None,
                    help="print the table of one or more (partial) --json files, e.g. a grid split over processes")
    ap.add_argument("--no-ce", action="store_true",
                    help="part of a grid split over processes whose ce runs another process makes: only --json is "
                         "written; print the table with --from-json over all the parts")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: digits, resnet8 teacher (1 epoch), 1 epoch, 2 seeds, ce/kd/kd_ls")
    args = ap.parse_args(argv)
    if args.quick:  # the protocol end to end in seconds, not a measurement
        args.data, args.epochs, args.seeds, args.teacher_epochs = "digits", 1, [0, 1], 1
        args.teacher_arch, args.threads = "resnet8", 1
        args.presets = args.presets or list(QUICK_PRESETS)
    names = args.presets or builtin_preset_names()
    args.presets = ([] if args.no_ce else ["ce"]) + [n for n in names if n != "ce"]
    return args


def write_json(path: Path, teacher_acc: float, rows: list[dict], **extra) -> None:
    """The per-seed runs (without their prediction tensors) and `extra` fields, as --from-json reads them."""
    runs = [{k: v for k, v in r.items() if k != "pred"} for r in rows]
    path.write_text(json.dumps({"teacher_test_acc": teacher_acc, **extra, "runs": runs}, indent=1, default=str))


def from_json(paths: list[Path]) -> str:
    """The table of (partial) --json files of one protocol, e.g. a grid split over two processes (each
    with its own ce runs): the presets whose every seed finished. Files must share the teacher."""
    runs: dict[tuple[str, int], dict] = {}
    accs = set()
    for path in paths:
        data = json.loads(path.read_text())
        accs.add(round(data["teacher_test_acc"], 6))
        for r in data["runs"]:
            runs.setdefault((r["preset"], r["seed"]), r)  # a ce run repeated in two files is the same run
    if len(accs) != 1:
        raise SystemExit(f"--from-json: the files were made with different teachers (test accuracies {sorted(accs)})")
    rows = list(runs.values())
    seeds = sorted({r["seed"] for r in rows if r["preset"] == "ce"})
    return table(summarise(rows, accs.pop(), seeds)) + "\n"


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    if args.from_json:
        text = from_json(args.from_json)
        print(text)
        return text
    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    teacher_path, info = cached_teacher(args, args.cache_dir)
    teacher = load_teacher(teacher_path)
    print(f"teacher {teacher_path}: {info}", flush=True)
    splits = load_data(args.data)
    t_logits = predict(teacher.model, splits.test, teacher.input_spec, torch.device("cpu"))
    t_acc = accuracy(t_logits, splits.test.y)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdc-bench-") as tmp:
        for name in args.presets:
            for seed in args.seeds:
                r = run_one(name, seed, args, splits, teacher, Path(tmp))
                r["agreement"] = float((r["pred"] == t_logits.argmax(1)).float().mean())
                rows.append(r)
                print(f"run {name} seed {seed}: test {100 * r['test_acc']:.2f}% agreement {100 * r['agreement']:.2f}% "
                      f"(best val epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)
                if args.json:  # partial results survive an interrupted grid
                    write_json(args.json.with_suffix(".partial.json"), t_acc, rows)
    if args.no_ce:
        if args.json:
            write_json(args.json, t_acc, rows, teacher=info)
        print("no ce runs here (--no-ce): print the table with --from-json over every part of the grid")
        return ""
    summary = summarise(rows, t_acc, args.seeds)
    fp = machine_fingerprint()
    ce = next(r for r in summary if r["preset"] == "ce")
    head = [f"# presets benchmark, {started:%Y-%m-%d %H:%M} UTC "
            f"({(dt.datetime.now(dt.UTC) - started).seconds // 60} min)",
            f"machine: {fp.get('cpu')} ({fp.get('cpus')} CPUs), device {args.device}, {args.threads} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}",
            f"data {args.data} (train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}); teacher "
            f"{args.teacher_arch} (CE, {args.teacher_epochs} epochs, cached) test accuracy {100 * t_acc:.2f}%; "
            f"student {args.student}; {args.epochs} epochs per preset; seeds {args.seeds}; "
            f"extra sets {args.set or 'none'}",
            f"teacher - plain student gap: {100 * (t_acc - ce['mean']):.2f} points; one test image = "
            f"{100 / len(splits.test):.2f} points", ""]
    text = "\n".join(head) + table(summary) + "\n"
    print()
    print(text)
    if args.json:
        write_json(args.json, t_acc, rows, args={k: str(v) for k, v in vars(args).items()}, teacher=info, machine=fp,
                   summary=summary)
    return text


if __name__ == "__main__":
    main()
