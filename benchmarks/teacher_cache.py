"""Online teacher vs the teacher-output cache (train.teacher_cache=views): step time and test accuracy.

    python benchmarks/teacher_cache.py            # digits, resnet8 -> tinycnn_w8, kd and dkd, N = 4, 8, 16, 3 seeds
    python benchmarks/teacher_cache.py --data mnist5k --epochs 10
    python benchmarks/teacher_cache.py --quick    # tiny synthetic data, seconds (the test suite runs it)

One teacher (trained once with CE, reused from --work) and one student at least 10x smaller in FLOPs. For
every preset and seed, the online run (the teacher forward in every step) and one cached run per N are
trained with the same seed, so each cached run is paired with its online run:
  * step time ratio = cached / online mean step time (train_seconds / steps; the one-off cache build is
    reported separately: it is N teacher passes over the training split, shared by every preset of a seed);
  * accuracy difference = cached - online test top-1 (best-validation weights, PyTorch fp32),
with the mean over seeds and a 95% confidence interval (Student's t; for the time ratio on log ratios).
A cached run of a seed reuses that seed's cache across presets (the key has no preset in it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan with one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan
    t = T975.get(len(values) - 1, 1.96)
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


def train_teacher(data: str, arch: str, epochs: int, work: Path) -> Path:
    from kdcompress.losses import load_checked_preset
    from kdcompress.pipeline import train_teacher as fit

    out = work / f"teacher-{arch}-{data.replace(':', '_').replace(',', '_').replace('=', '')}-{epochs}.pt"
    if not out.exists():
        ce = load_checked_preset("ce", [f"train.epochs={epochs}", "train.schedule=cosine"])
        fit(data=data, arch=arch, preset=ce, out=out, device="cpu", console=Console(stderr=True, quiet=True))
    return out


def one_run(teacher_path: Path, data: str, student: str, preset: str, seed: int, epochs: int, views: int | None,
            out: Path) -> dict:
    from kdcompress import losses, students
    from kdcompress.core.infer import accuracy, predict
    from kdcompress.core.runio import RunDir
    from kdcompress.data.specs import load_data
    from kdcompress.teacher.formats import load_teacher
    from kdcompress.train.loop import train

    teacher = load_teacher(teacher_path)
    splits = load_data(data, teacher.input_spec)
    sets = [f"train.epochs={epochs}", f"train.seed={seed}"]
    if views:
        sets += ["train.teacher_cache=views", f"train.cache_views={views}"]
    p = losses.load_checked_preset(preset, sets)
    buf = io.StringIO()
    t0 = time.perf_counter()
    r = train(arch=student, splits=splits, spec=teacher.input_spec, preset=p, teacher=teacher, run=RunDir(out),
              device=torch.device("cpu"), fingerprint={"data": data, "teacher": teacher.sha256, "preset": preset},
              console=Console(file=buf), restart=True,
              make_student=lambda: students.build_student(student, splits.num_classes, teacher.input_spec),
              make_objective=lambda ctx: losses.Objective(p.terms, ctx))
    total = time.perf_counter() - t0
    model, _ = students.load_checkpoint(out / "student.pt")
    acc = accuracy(predict(model, splits.test, teacher.input_spec, torch.device("cpu")), splits.test.y)
    steps = splits.train.num_batches(min(p.train.batch_size, len(splits.train)), drop_last=True) * epochs
    train_s = sum(h["train_seconds"] for h in r.history)
    build_s = 0.0
    if views:  # None when this run reused a cache another preset of the seed built
        build_s = json.loads((out / "teacher_cache.json").read_text())["built_seconds"] or 0.0
    return {"preset": preset, "seed": seed, "views": views or 0, "test_accuracy": acc, "step_s": train_s / steps,
            "train_s": train_s, "total_s": total, "build_s": build_s}


def summarise(runs: list[dict], presets: list[str], views: list[int]) -> list[dict]:
    rows = []
    for preset in presets:
        online = {r["seed"]: r for r in runs if r["preset"] == preset and r["views"] == 0}
        acc_on = [r["test_accuracy"] for r in online.values()]
        rows.append({"preset": preset, "mode": "online", "n": len(acc_on), "acc": mean_ci(acc_on),
                     "step_ms": 1000 * statistics.fmean(r["step_s"] for r in online.values())})
        for n in views:
            cached = [r for r in runs if r["preset"] == preset and r["views"] == n and r["seed"] in online]
            if not cached:
                continue
            diffs = [r["test_accuracy"] - online[r["seed"]]["test_accuracy"] for r in cached]
            logs = [math.log(r["step_s"] / online[r["seed"]]["step_s"]) for r in cached]
            lm, lh = mean_ci(logs)
            rows.append({"preset": preset, "mode": f"cached N={n}", "n": len(cached),
                         "acc": mean_ci([r["test_accuracy"] for r in cached]), "diff": mean_ci(diffs),
                         "ratio": (math.exp(lm), math.exp(lm - lh) if not math.isnan(lh) else math.nan,
                                   math.exp(lm + lh) if not math.isnan(lh) else math.nan),
                         "step_ms": 1000 * statistics.fmean(r["step_s"] for r in cached),
                         "build_s": max(r["build_s"] for r in cached)})
    return rows


def table(rows: list[dict]) -> str:
    def pm(v: tuple[float, float], scale: float = 100) -> str:
        return f"{scale * v[0]:.2f} ± {scale * v[1]:.2f}" if not math.isnan(v[1]) else f"{scale * v[0]:.2f}"

    out = ["| preset | mode | seeds | test acc % (95% CI) | step ms | step time ratio (95% CI) | "
           "acc diff pp (95% CI) | cache build s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['ratio'][0]:.3f} [{r['ratio'][1]:.3f}, {r['ratio'][2]:.3f}]" if "ratio" in r else "1")
        diff = pm(r["diff"]) if "diff" in r else "0"
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        out.append(f"| {r['preset']} | {r['mode']} | {r['n']} | {pm(r['acc'])} | {r['step_ms']:.2f} | {ratio} | "
                   f"{diff} | {build} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits", help="dataset spec (digits, mnist5k where the spec exists, ...)")
    ap.add_argument("--teacher-arch", default="resnet8")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student", default="tinycnn_w8")
    ap.add_argument("--presets", default="kd,dkd")
    ap.add_argument("--views", default="4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/.teacher_cache_work"))
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny synthetic data, 1 epoch, 2 seeds, N=2 (seconds)")
    a = ap.parse_args(argv)
    if a.quick:
        a.data, a.teacher_arch, a.teacher_epochs, a.student = ("synthetic:classes=3,size=8,n=90", "resnet8", 1,
                                                               "tinycnn_w8")
        a.presets, a.views, a.seeds, a.epochs = "kd", "2", 2, 1
    presets, views = a.presets.split(","), [int(v) for v in a.views.split(",")]
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KDCOMPRESS_CACHE", str(a.work / "cache"))
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    from kdcompress import students
    from kdcompress.teacher.formats import load_teacher

    t_path = train_teacher(a.data, a.teacher_arch, a.teacher_epochs, a.work)
    t = load_teacher(t_path)
    s_cap = students.capacity(students.build_student(a.student, t.num_classes, t.input_spec), t.input_spec)
    head = (f"teacher cache benchmark: {a.data}, {a.teacher_arch} ({t.flops:,} FLOPs) -> {a.student} "
            f"({s_cap.flops:,} FLOPs, {t.flops / s_cap.flops:.1f}x smaller); "
            f"{a.epochs} epochs, seeds 0..{a.seeds - 1}\n"
            f"date: {dt.datetime.now().isoformat(timespec='seconds')}; "
            f"CPU: {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(head, flush=True)
    runs = []
    for seed in range(a.seeds):
        for preset in presets:
            for n in [None, *views]:
                r = one_run(t_path, a.data, a.student, preset, seed, a.epochs, n,
                            a.work / "runs" / f"{preset}-s{seed}-n{n or 0}")
                runs.append(r)
                if a.json_out:  # after every run: an interrupted benchmark still leaves its finished pairs
                    a.json_out.write_text(json.dumps({"header": head, "runs": runs}, indent=1))
                print(f"  {preset} seed {seed} {'online' if not n else f'N={n}'}: acc {r['test_accuracy']:.4f}, "
                      f"step {1000 * r['step_s']:.2f} ms", file=sys.stderr, flush=True)
    rows = summarise(runs, presets, views)
    print(table(rows))
    result = {"header": head, "runs": runs, "rows": rows}
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
