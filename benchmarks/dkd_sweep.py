"""Why does dkd give nothing at full length on 10-class data? (issue 26) A sweep on the validation split.

DKD weights the non-target part of the KL (NCKD) by beta, where classic KD weights it by 1 - p_t (the teacher's
softened target probability): KL = TCKD + (1 - p_t) NCKD. mdistiller's beta = 8 was tuned for CIFAR-100; on a
10-class problem with a confident teacher, 1 - p_t is small and beta = 8 multiplies NCKD many times over what KD
gives it. This script trains the same student with kd, dkd at several betas, dkd without its warm-up, and the
plain student, paired by seed, and prints the mean validation accuracy of each (the choice is made on validation;
test accuracy is printed beside it, not used to choose), with the paired difference to dkd's default.

It also prints the teacher's mean 1 - p_t at the preset's T on the training split: the beta at which DKD gives
NCKD about KD's weight.

    .venv/bin/python benchmarks/dkd_sweep.py --data mnist5k --student tinycnn_w16 --teacher-arch resnet8x4 \\
        --epochs 80 --seeds 0 1 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_protocol import _preset, run  # benchmarks/, beside this file
from presets import add_setting_args, load_setting, paired_stats

from kdcompress.core.infer import predict
from kdcompress.core.system import machine_fingerprint

# (label, preset, --set overrides)
CONFIGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ce", "ce", ()),
    ("kd", "kd", ()),
    ("dkd beta=8 (default)", "dkd", ()),
    ("dkd beta=2", "dkd", ("dkd.beta=2",)),
    ("dkd beta=0.5", "dkd", ("dkd.beta=0.5",)),
    ("dkd beta=8, no warm-up", "dkd", ("dkd.warmup_epochs=0",)),
)


def non_target_mass(teacher, splits, T: float) -> float:
    """The teacher's mean 1 - p_t at temperature T over the training split (p_t: the labelled class)."""
    logits = predict(teacher.model, splits.train, teacher.input_spec, torch.device("cpu"))
    p = torch.softmax(torch.as_tensor(logits) / T, dim=1)
    y = torch.as_tensor(splits.train.y).long()
    return float(1 - p[torch.arange(len(y)), y].mean())


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setting_args(ap, epochs=80)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="labels of CONFIGS to run (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, splits = load_setting(args)
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdc-dkd-") as tmp:
        for seed in args.seeds:
            for label, name, sets in configs:
                r = run(label, _preset(name, args.epochs, seed, list(sets)), args.student, seed, splits, teacher,
                        Path(tmp), args.device)
                rows.append(r)
                print(f"seed {seed} {label}: val {100 * r['val_acc']:.2f}% test {100 * r['test_acc']:.2f}% "
                      f"({r['cpu_seconds']:.0f} CPU s)", flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"runs": rows, "args": {k: str(v) for k, v in vars(args).items()}},
                                                    indent=1))
    fp = machine_fingerprint()
    text = "\n".join([f"machine: {fp.get('cpu')} ({fp.get('cpus')} CPUs), load average {os.getloadavg()[0]:.2f}, "
                      f"{args.threads} torch threads, torch {torch.__version__}; "
                      f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                      f"teacher mean 1 - p_t at T=4 on the training split: {non_target_mass(teacher, splits, 4.0):.3f}",
                      "", table(rows, [c[0] for c in configs], args.seeds)])
    print(text)
    return text


def table(rows: list[dict], labels: list[str], seeds: list[int]) -> str:
    by = {(r["label"], r["seed"]): r for r in rows}
    ref = "dkd beta=8 (default)"
    lines = ["| config | val acc % | test acc % | val vs dkd default, points [95% CI] |", "|---|---:|---:|---|"]
    for label in labels:
        val = [by[(label, s)]["val_acc"] for s in seeds]
        test = [by[(label, s)]["test_acc"] for s in seeds]
        diff = ""
        if label != ref and ref in labels:
            m, lo, hi = paired_stats([v - by[(ref, s)]["val_acc"] for v, s in zip(val, seeds, strict=True)])
            diff = f"{100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        lines.append(f"| {label} | {100 * statistics.mean(val):.2f} | {100 * statistics.mean(test):.2f} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
