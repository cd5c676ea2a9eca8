"""Every KD preset x several seeds on the digits, one fixed teacher and student, equal epochs.

Prints test accuracy (mean ± std over seeds), the plain-student (`ce`) and teacher baselines, and the
mean training-step time relative to `kd` (training seconds per epoch from the trainer's history, validation
excluded; IC-KD's one-off bank build is reported separately). Run:

    .venv/bin/python benchmarks/presets.py [--epochs 40] [--seeds 0 1 2] [--student tinycnn_w16]

Each preset keeps its own optimiser recipe ([train] in its TOML) with --epochs overriding the length;
warm-ups stay in absolute epochs as the authors set them (20 for dkd/gdkd/nd/ickd).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from kdcompress.core.config import apply_overrides, builtin_preset_names, load_preset
from kdcompress.core.infer import accuracy, predict
from kdcompress.core.runio import RunDir
from kdcompress.core.system import machine_fingerprint
from kdcompress.data.specs import load_data
from kdcompress.pipeline import train_teacher
from kdcompress.teacher.formats import load_teacher
from kdcompress.train.loop import train

QUIET = Console(stderr=True, quiet=True)


def run_one(preset_name: str, sets: list[str], seed: int, args, splits, teacher, root: Path) -> dict:
    preset = apply_overrides(load_preset(preset_name), [f"train.epochs={args.epochs}", f"train.seed={seed}", *sets])
    run = RunDir(root / f"{preset_name}-{'-'.join(sets) or 'default'}-{seed}")
    t0 = time.perf_counter()
    result = train(arch=args.student, splits=splits, spec=teacher.input_spec, preset=preset,
                   teacher=teacher if preset.needs_teacher else None, run=run, device=torch.device("cpu"),
                   fingerprint={"bench": preset_name, "seed": seed, "sets": sets}, console=QUIET, restart=True)
    wall = time.perf_counter() - t0
    model = load_teacher(run.student).model
    test_acc = accuracy(predict(model, splits.test, teacher.input_spec, torch.device("cpu")), splits.test.y)
    steps = splits.train.num_batches(min(preset.train.batch_size, len(splits.train)), drop_last=True)
    train_s = sum(h.get("train_seconds", 0.0) for h in result.history)
    bs = min(preset.train.batch_size, len(splits.train))
    return {"acc": test_acc, "step_ms": 1000 * train_s / (steps * args.epochs),
            "us_per_img": 1e6 * train_s / (steps * bs * args.epochs), "bs": bs, "wall": wall,
            "overhead_s": wall - train_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--student", default="tinycnn_w16")
    ap.add_argument("--teacher-arch", default="resnet8x4")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="kdc-bench-"))
    teacher_path = root / "teacher.pt"
    ce = apply_overrides(load_preset("ce"), ["train.epochs=15", "train.schedule=cosine"])
    info = train_teacher(data="digits", arch=args.teacher_arch, preset=ce, out=teacher_path, device="cpu",
                         console=QUIET)
    teacher = load_teacher(teacher_path)
    splits = load_data("digits")

    variants: list[tuple[str, list[str]]] = [(n, []) for n in builtin_preset_names()]
    variants.append(("ickd", ["picd.mode=static", "nicd.mode=static"]))
    rows = []
    for name, sets in variants:
        res = [run_one(name, sets, s, args, splits, teacher, root) for s in args.seeds]
        accs = [r["acc"] for r in res]
        rows.append({"name": name + (" (static)" if sets else (" (dynamic)" if name == "ickd" else "")),
                     "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "step_ms": statistics.mean(r["step_ms"] for r in res),
                     "us_per_img": statistics.mean(r["us_per_img"] for r in res),
                     "overhead_s": statistics.mean(r["overhead_s"] for r in res), "bs": res[0]["bs"]})
        print(f"done {rows[-1]['name']}", flush=True)
    kd_us = next(r["us_per_img"] for r in rows if r["name"] == "kd")
    ce_acc = next(r["mean"] for r in rows if r["name"] == "ce")
    fp = machine_fingerprint()
    print()
    print(f"# presets benchmark, {dt.date.today()} on {fp['cpu']} ({fp['cpus']} CPUs), torch {torch.__version__}, "
          f"{args.threads} threads, Python {platform.python_version()}")
    print(f"digits, teacher {args.teacher_arch} (CE, 15 epochs; test accuracy {100 * info['test_accuracy']:.2f}%), "
          f"student {args.student}, {args.epochs} epochs, seeds {args.seeds}")
    print()
    print("| preset | test accuracy % (mean ± std) | vs plain student | train step ms (batch) | µs per image | per-image time / kd | wall minus training s (prepare, validation, checkpoints) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {100 * (r['mean'] - ce_acc):+.2f} | "
              f"{r['step_ms']:.2f} ({r['bs']}) | {r['us_per_img']:.1f} | {r['us_per_img'] / kd_us:.2f} | {r['overhead_s']:.1f} |")
    print(f"| teacher ({args.teacher_arch}) | {100 * info['test_accuracy']:.2f} | | | | | |")


if __name__ == "__main__":
    main()
