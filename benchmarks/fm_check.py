"""Why does `fm` learn slowly on a small student? Short runs that take its recipe apart (issue 26).

Each row changes one thing against `fm` or `kd` (the same student, seed and teacher; teacher outputs online or
from N cached views), so a slow row can be traced: is it the cache (online vs cached views), mixup, the
optimizer, the missing label term or the temperature? Prints validation and test accuracy, CPU seconds and the
validation curve of each run.

    .venv/bin/python benchmarks/fm_check.py --epochs 20 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_protocol import _preset, run  # benchmarks/, beside this file
from presets import add_setting_args, load_setting


VIEWS = ("train.teacher_cache=views", "train.cache_views=4")
SGD = ("train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.weight_decay=5e-4")
# (label, preset, --set overrides)
ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kd, online teacher", "kd", ("train.teacher_cache=off",)),
    ("kd, KD term alone (ce.weight=0), 4 views", "kd", (*VIEWS, "ce.weight=0")),
    ("kd at T=1, 4 views", "kd", (*VIEWS, "kd.T=1")),
    ("kd at T=1, KD term alone, 4 views", "kd", (*VIEWS, "kd.T=1", "ce.weight=0")),
    ("fm, online teacher", "fm", ("train.teacher_cache=off",)),
    ("fm, 4 views", "fm", VIEWS),
    ("fm without mixup, 4 views", "fm", (*VIEWS, "train.mix=none")),
    ("fm with kd's SGD recipe, 4 views", "fm", (*VIEWS, *SGD)),
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setting_args(ap, epochs=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    teacher, splits = load_setting(args)
    print("| run | val % | test % | CPU s | validation curve |\n|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="kdc-fm-") as tmp:
        for label, name, sets in ROWS:
            r = run(label, _preset(name, args.epochs, args.seed, list(sets)), args.student, args.seed, splits,
                    teacher, Path(tmp), args.device)
            curve = " ".join(f"{100 * v:.0f}" for v in r["curve"])
            print(f"| {label} | {100 * r['val_acc']:.1f} | {100 * r['test_acc']:.1f} | {r['cpu_seconds']:.0f} | "
                  f"{curve} |", flush=True)


if __name__ == "__main__":
    main()
