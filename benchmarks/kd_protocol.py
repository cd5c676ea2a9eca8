"""Does distillation pay against a converged plain student, and at equal compute? (issue 26's protocol)

For each student and seed:
  * `ceN`: the plain student trained from scratch for each length N of --baseline-epochs (default 2x and 4x
    --epochs, each a full schedule) with the same recipe as the presets' plain runs, its validation curve
    recorded; per seed, `ce` is the one validation prefers. The ladder table says whether the last doubling still
    raised validation accuracy (by PLATEAU_GAIN or more): if it did, the baseline is not at its plateau and the
    table says so;
  * every preset for --epochs (several lengths: each, and per seed the one validation prefers), teacher outputs
    as `distill` would use them (train.teacher_cache=auto decided by train.cachechoice for this teacher and
    student), wall seconds measured;
  * `ce@P`: the plain student given the same compute as preset P's run, with --equal-compute: epochs = P's CPU
    seconds (process time, all threads; wall time would follow whatever else shares the machine) / the shortest
    ladder run's CPU seconds per epoch, at least 1.
Checkpoints are the best-validation epoch's; test accuracy is reported. Per preset: the paired difference to `ce`
(mean, 95% t interval), the fraction of the teacher - ce gap it closes, wins, and the paired difference to `ce@P`.
--json is rewritten after every run; --resume keeps the runs it holds, so an interrupted protocol goes on.

    .venv/bin/python benchmarks/kd_protocol.py --data mnist5k --students tinycnn_w16 resnet8 \\
        --teacher-arch resnet14 --epochs 80 --seeds 0 1 2 3 4 --presets kd nd fm --equal-compute
    .venv/bin/python benchmarks/kd_protocol.py --quick      # digits, tiny: the protocol end to end, not a measurement
    .venv/bin/python benchmarks/kd_protocol.py ... --seeds 0 1 2 --from-json s01.json s2.json   # seeds run apart

Prints markdown tables, the machine and the date; --json PATH writes every run.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from presets import cached_teacher, paired_stats  # benchmarks/presets.py, beside this file

from kdcompress import losses, students
from kdcompress.core.infer import accuracy, predict
from kdcompress.core.runio import RunDir
from kdcompress.core.system import machine_fingerprint
from kdcompress.data import load_data
from kdcompress.teacher import load_teacher
from kdcompress.pipeline import cache_facts
from kdcompress.train import decide_cache, train

QUIET = Console(stderr=True, quiet=True)


def _preset(name: str, epochs: int, seed: int, extra: list[str]):
    return losses.load_checked_preset(name, [f"train.epochs={epochs}", f"train.seed={seed}", *extra])


def _with_cache(preset, teacher, student: str, splits, spec):
    """train.teacher_cache=auto decided as distill decides it (pipeline.cache_facts, train.cachechoice)."""
    flops = students.capacity(students.build_student(student, splits.num_classes, spec), spec).flops
    t_flops = students.capacity(teacher.model, spec).flops if teacher.exportable else None
    d = decide_cache(preset.train, cache_facts(preset, teacher, flops, t_flops), splits.train, splits.num_classes)
    return replace(preset, train=replace(preset.train, teacher_cache=d.used)), d.used


def run(label: str, preset, student: str, seed: int, splits, teacher, root: Path, device: str) -> dict:
    spec = teacher.input_spec
    preset, cache = _with_cache(preset, teacher, student, splits, spec)
    rd = RunDir(root / f"{student}-{label}-{seed}")
    # a private teacher-output cache: each run builds (and pays for) its own, as a lone `distill` would; a shared
    # one would let a run reuse outputs another run paid for, and equal compute would undercount it
    before = os.environ.get("KDCOMPRESS_CACHE")
    os.environ["KDCOMPRESS_CACHE"] = str(root / f"cache-{student}-{label}-{seed}")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = train(arch=student, splits=splits, spec=spec, preset=preset,
                       teacher=teacher if preset.needs_teacher else None, run=rd, device=torch.device(device),
                       fingerprint={"bench": label, "seed": seed, "student": student}, console=QUIET, restart=True,
                       make_student=lambda: students.build_student(student, splits.num_classes, spec),
                       make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
    finally:  # the process's own cache again (a test process goes on after this run)
        if before is None:
            os.environ.pop("KDCOMPRESS_CACHE", None)
        else:
            os.environ["KDCOMPRESS_CACHE"] = before
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    model, _ = students.load_checkpoint(rd.student)  # the best-validation epoch's weights
    test = accuracy(predict(model, splits.test, spec, torch.device("cpu")), splits.test.y)
    return {"label": label, "preset": preset.name, "student": student, "seed": seed, "epochs": preset.train.epochs,
            "test_acc": test, "val_acc": result.best_val_accuracy, "best_epoch": result.best_epoch,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "teacher_cache": cache,
            "curve": [h["val_accuracy"] for h in result.history]}


PLATEAU_GAIN = 0.0025  # validation points (as a fraction): a doubling that gains less is the plateau


class Ledger:
    """Every finished run, written to --json after each one (atomically), so an interrupted protocol resumes
    (--resume) without redoing runs. A run is what it trained: (student, preset spec, epochs, seed, --set); its
    label is only how a table names it, so "kd" at 20 epochs in one file is "kd20" of a ladder in another, and
    an equal-compute ce run of 40 epochs is the ladder's ce40."""

    def __init__(self, path: Path | None, resume: bool, meta: dict, sources: list[Path] = ()):
        self.path, self.meta, self.rows = path, meta, []
        self.frozen = bool(sources)  # --from-json: the runs of these files, nothing trained
        for src in ([path] if resume and path is not None and path.exists() else []) + list(sources):
            self.rows += self._read(src)

    @staticmethod
    def _read(src: Path) -> list[dict]:
        """A file's runs, each with the --set it ran under (older files kept it once, in their meta)."""
        data = json.loads(src.read_text())
        file_set = ast.literal_eval(data.get("args", {}).get("set", "[]"))
        return [{"set": file_set, "spec": r["preset"], **r} for r in data["runs"]]

    def get(self, student: str, spec: str, epochs: int, seed: int, sets: list[str]) -> dict | None:
        """The first run that trained this (the first file holding it wins)."""
        key = (student, spec, epochs, seed, list(sets))
        return next((r for r in self.rows if (r["student"], r["spec"], r["epochs"], r["seed"], r["set"]) == key),
                    None)

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.meta, "runs": self.rows}, indent=1))
            tmp.replace(self.path)
        return row


def chosen_on_val(ladder: list[dict], label: str = "ce") -> dict:
    """The run validation prefers among one method's schedule lengths (ties: the shorter), labelled `label`."""
    best = max(ladder, key=lambda r: (r["val_acc"], -r["epochs"]))
    return {**best, "label": label, "from": best["label"]}


def student_runs(student: str, args, splits, teacher, root: Path, ledger: Ledger) -> list[dict]:
    def once(label: str, spec: str, epochs: int, seed: int) -> dict:
        done = ledger.get(student, spec, epochs, seed, args.set)
        if done is not None:
            return {**done, "label": label}
        if ledger.frozen:
            raise SystemExit(f"kd_protocol: --from-json: no run {label} ({spec}, {epochs} epochs) of {student}, "
                             f"seed {seed}, in those files")
        name, *extra = spec.split(",")  # a variant: "NAME,key=value,..."
        preset = _preset(name, epochs, seed, [*args.set, *extra])
        print(f"{time.strftime('%H:%M:%S')} {student} seed {seed}: training {label} ({spec}, {epochs} epochs)",
              file=sys.stderr, flush=True)  # hours of training: say what runs now
        row = run(label, preset, student, seed, splits, teacher, root, args.device)
        return ledger.add({**row, "spec": spec, "set": list(args.set)})

    rows = []
    for seed in args.seeds:
        ladder = [once(f"ce{n}", "ce", n, seed) for n in args.baseline_epochs]
        ce = chosen_on_val(ladder)
        rows += [*ladder, ce]
        per_epoch = ladder[0]["cpu_seconds"] / ladder[0]["epochs"]  # CPU seconds: fair on a shared machine
        for entry in args.presets:
            name, _, spec = entry.partition(":")  # "LABEL:NAME,key=value,..." is a preset variant
            if len(args.epochs) == 1:
                r = once(name, spec or name, args.epochs[0], seed)
            else:  # the preset's own ladder, chosen on validation as the baseline's is
                runs = [once(f"{name}{n}", spec or name, n, seed) for n in args.epochs]
                rows += runs
                r = chosen_on_val(runs, name)
            rows.append(r)
            eq = None
            if args.equal_compute:
                eq = once(f"ce@{name}", "ce", max(1, round(r["cpu_seconds"] / per_epoch)), seed)
                rows.append(eq)
            print(f"{student} seed {seed}: ce {100 * ce['test_acc']:.2f}% ({ce['epochs']} ep), {name} "
                  f"{100 * r['test_acc']:.2f}% ({r['seconds']:.0f} s, cache {r['teacher_cache']})"
                  + (f", ce@{name} {100 * eq['test_acc']:.2f}% ({eq['epochs']} ep)" if eq else ""), flush=True)
    return rows


def ladder_table(rows: list[dict], seeds: list[int], lengths: list[int]) -> str:
    """The plain student at each schedule length: mean validation and test accuracy, how often validation chose
    it, and whether the last doubling still paid (the plateau check)."""
    by = {(r["label"], r["seed"]): r for r in rows}
    chosen = [by[("ce", s)]["from"] for s in seeds]
    lines = ["| plain student, epochs | val acc % | test acc % | chosen on validation |", "|---:|---:|---:|---:|"]
    vals = []
    for n in lengths:
        runs = [by[(f"ce{n}", s)] for s in seeds]
        vals.append(statistics.mean(r["val_acc"] for r in runs))
        lines.append(f"| {n} | {100 * vals[-1]:.2f} | {100 * statistics.mean(r['test_acc'] for r in runs):.2f} | "
                     f"{chosen.count(f'ce{n}')}/{len(seeds)} |")
    if len(lengths) > 1:
        gain = vals[-1] - vals[-2]
        verdict = "at its plateau" if gain < PLATEAU_GAIN else "NOT at its plateau: train it longer"
        lines.append(f"\nlast doubling {lengths[-2]} -> {lengths[-1]} epochs: validation {100 * gain:+.2f} points "
                     f"(plateau when < {100 * PLATEAU_GAIN:.2f}): {verdict}")
    return "\n".join(lines)


def summarise(rows: list[dict], teacher_acc: float, seeds: list[int], presets: list[str]) -> list[dict]:
    by = {(r["label"], r["seed"]): r for r in rows}
    ce = [by[("ce", s)]["test_acc"] for s in seeds]
    gap = teacher_acc - statistics.mean(ce)
    out = [{"label": "ce", "mean": statistics.mean(ce), "n": len(seeds),
            "lengths": sorted(by[("ce", s)]["epochs"] for s in seeds),
            "seconds": statistics.mean(by[("ce", s)]["cpu_seconds"] for s in seeds)}]
    for p in presets:
        acc = [by[(p, s)]["test_acc"] for s in seeds]
        m, lo, hi = paired_stats([a - c for a, c in zip(acc, ce, strict=True)])
        row = {"label": p, "mean": statistics.mean(acc), "diff": m, "lo": lo, "hi": hi, "n": len(seeds),
               "gap_closed": m / gap if gap > 0 else math.nan, "wins": sum(a > c for a, c in zip(acc, ce, strict=True)),
               "seconds": statistics.mean(by[(p, s)]["cpu_seconds"] for s in seeds),
               "cache": sorted({by[(p, s)]["teacher_cache"] for s in seeds}),
               "lengths": sorted(by[(p, s)]["epochs"] for s in seeds)}
        if all((f"ce@{p}", s) in by for s in seeds):
            eq = [by[(f"ce@{p}", s)]["test_acc"] for s in seeds]
            row["eq"] = paired_stats([a - e for a, e in zip(acc, eq, strict=True)])
            row["eq_epochs"] = statistics.mean(by[(f"ce@{p}", s)]["epochs"] for s in seeds)
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    def ci(m, lo, hi) -> str:
        return f"{100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    lines = ["| run | test acc % | vs ce (its ladder), points [95% CI] | gap closed | wins | vs ce at equal compute "
             "[95% CI] (ce epochs) | mean CPU s | teacher outputs |", "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lens = sorted(set(r["lengths"]))
        chosen = ", ".join(f"{n} ep {r['lengths'].count(n)}/{r['n']}" for n in lens)
        if r["label"] == "ce":  # whether that is a plateau is the ladder's verdict, above the table
            lines.append(f"| ce, chosen on validation ({chosen}) | {100 * r['mean']:.2f} | | | | | "
                         f"{r['seconds']:.0f} | |")
            continue
        eq = f"{ci(*r['eq'])} ({r['eq_epochs']:.0f})" if "eq" in r else "not run"
        gap = "n/a" if math.isnan(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}%"
        lines.append(f"| {r['label']} ({chosen}) | {100 * r['mean']:.2f} | {ci(r['diff'], r['lo'], r['hi'])} | {gap} | "
                     f"{r['wins']}/{r['n']} | {eq} | {r['seconds']:.0f} | {', '.join(r['cache'])} |")
    return "\n".join(lines)


def pair_table(rows: list[dict], seeds: list[int], a: str, b: str) -> str:
    """Preset b against preset a, seed by seed (e.g. the cached teacher against the online one): the paired
    difference in test and validation accuracy (mean, 95% t interval) and b's CPU seconds as a fraction of a's."""
    by = {(r["label"], r["seed"]): r for r in rows}
    lines = [f"{b} vs {a}, paired over seeds {seeds}:"]
    for key in ("test_acc", "val_acc"):
        diffs = [by[(b, s)][key] - by[(a, s)][key] for s in seeds]
        m, lo, hi = paired_stats(diffs)
        lines.append(f"  {key.split('_')[0]}: {100 * m:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}] (per seed "
                     + ", ".join(f"{100 * d:+.2f}" for d in diffs) + ")")
    ratios = [by[(b, s)]["cpu_seconds"] / by[(a, s)]["cpu_seconds"] for s in seeds]
    lines.append(f"  CPU seconds: {statistics.mean(ratios):.2f}x (per seed "
                 + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--students", nargs="+", default=["tinycnn_w16"])
    ap.add_argument("--teacher-arch", default="resnet14")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, nargs="+", default=[80],
                    help="the presets' schedule lengths; with several, each preset runs at each (labelled NAMEn) and "
                         "per seed the one validation prefers is compared, as the baseline's is")
    ap.add_argument("--baseline-epochs", type=int, nargs="+", default=None,
                    help="the plain student's schedule lengths, each a full run (default 2x and 4x --epochs); "
                         "per seed the one with the best validation accuracy is the baseline")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--presets", nargs="+", default=["kd", "nd", "fm"],
                    help="preset names, or LABEL:NAME,key=value,... for a variant (e.g. "
                         "fm32:fm,train.teacher_cache=views,train.cache_views=32)")
    ap.add_argument("--equal-compute", action="store_true", help="also a ce run with each preset's seconds")
    ap.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                    help="also print preset B against preset A (two of --presets' labels), paired by seed")
    ap.add_argument("--set", nargs="*", default=[], help="--set overrides for every run (e.g. train.batch_size=128)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "kdcompress-bench")
    ap.add_argument("--json", type=Path, default=None, help="every run, rewritten after each one")
    ap.add_argument("--resume", action="store_true", help="keep the runs --json already holds; run the rest")
    ap.add_argument("--from-json", type=Path, nargs="+", default=[],
                    help="print the tables from the runs these --json files hold (several: runs split over "
                         "processes), training nothing; the other flags say which runs the tables take")
    ap.add_argument("--quick", action="store_true",
                    help="defaults for a smoke run: digits, resnet8 teacher (1 epoch), 1-2 epochs, 2 seeds")
    args = ap.parse_args(argv)
    if args.quick:  # new defaults; flags given explicitly still win
        ap.set_defaults(data="digits", students=["tinycnn_w8"], teacher_arch="resnet8", teacher_epochs=1, epochs=[1],
                        baseline_epochs=[1, 2], seeds=[0, 1], presets=["kd"], threads=1, equal_compute=True)
        args = ap.parse_args(argv)
    labels = [e.partition(":")[0] for e in args.presets]
    if args.pair and not set(args.pair) <= set(labels):
        ap.error(f"--pair {' '.join(args.pair)}: each must be one of --presets' labels ({', '.join(labels)})")
    args.epochs = sorted(args.epochs)
    args.baseline_epochs = sorted(args.baseline_epochs or [2 * args.epochs[-1], 4 * args.epochs[-1]])
    return args


def setting(args) -> tuple[list[str], dict, object, object]:
    """(the head lines, the ledger's meta, the teacher, the splits): loaded, or with --from-json read from the
    first file (the runs' machine and teacher; nothing loaded)."""
    if args.from_json:
        meta = {k: v for k, v in json.loads(args.from_json[0].read_text()).items() if k != "runs"}
        fp, sizes = meta["machine"], "sizes as in the runs"
        head = [f"# kd protocol, the runs of {', '.join(str(p) for p in args.from_json)}"]
        teacher = splits = None
    else:
        path, info = cached_teacher(args, args.cache_dir)
        teacher = load_teacher(path)
        splits = load_data(args.data, teacher.input_spec)
        t_acc = accuracy(predict(teacher.model, splits.test, teacher.input_spec, torch.device("cpu")), splits.test.y)
        fp = machine_fingerprint()
        meta = {"teacher_test_acc": t_acc, "teacher": info, "machine": fp,
                "args": {k: str(v) for k, v in vars(args).items()}}
        sizes = (f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}; one test image = "
                 f"{100 / len(splits.test):.2f} points")
        head = [f"# kd protocol, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"]
    head += [f"machine: {fp.get('cpu')} ({fp.get('cpus')} CPUs), load average {os.getloadavg()[0]:.2f}, device "
             f"{args.device}, {args.threads} torch threads, torch {torch.__version__}, "
             f"Python {platform.python_version()}",
             f"data {args.data} ({sizes}); teacher {args.teacher_arch} ({args.teacher_epochs} epochs) test "
             f"{100 * meta['teacher_test_acc']:.2f}%; presets {args.epochs} epochs, ce {args.baseline_epochs}; "
             f"seeds {args.seeds}", ""]
    return head, meta, teacher, splits


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    head, meta, teacher, splits = setting(args)
    t_acc = meta["teacher_test_acc"]
    parts = []
    ledger = Ledger(args.json, args.resume, meta, args.from_json)
    with tempfile.TemporaryDirectory(prefix="kdc-protocol-") as tmp:
        for student in args.students:
            got = student_runs(student, args, splits, teacher, Path(tmp), ledger)
            parts += [f"## student {student}", "", ladder_table(got, args.seeds, args.baseline_epochs), "",
                      table(summarise(got, t_acc, args.seeds, [e.partition(":")[0] for e in args.presets])), ""]
            parts += [pair_table(got, args.seeds, *args.pair), ""] if args.pair else []
    text = "\n".join(head + parts) + f"\nwall {(dt.datetime.now(dt.UTC) - started).seconds // 60} min\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
