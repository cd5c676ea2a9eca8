"""Choose a preset's hyper-parameters on the validation split, never on the test split.

For one preset, every configuration of the grid (a comma-separated list of `--set` items; `default` is the
preset as shipped) is trained with presets.py's protocol (same cached teacher, same student, same epochs,
best-validation checkpoint) on tuning seeds that are not the benchmark's seeds (default 100 and 101), and
ranked by the mean best validation accuracy. Test accuracy is neither computed nor printed, so the choice
cannot peek at it; the chosen configuration is then run on the benchmark seeds by presets.py.

    .venv/bin/python benchmarks/tune_presets.py --data mnist5k --epochs 30 --preset dkd_ls \\
        --grid default "dkd.alpha=1,dkd.beta=9" "dkd.T=2" --json /tmp/tune-dkd_ls.json
    .venv/bin/python benchmarks/tune_presets.py --merge /tmp/a.json /tmp/b.json   # one table of several runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _presets_module():
    spec = importlib.util.spec_from_file_location("kdc_bench_presets", HERE / "presets.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--grid", nargs="+", default=["default"],
                    help="configurations: 'default' or comma-separated --set items, e.g. picd.k=4,nicd.k=4")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--student", default="tinycnn_w8")
    ap.add_argument("--teacher-arch", default="resnet8x4")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "kdcompress-bench")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="print one table of these --json files")
    return ap.parse_args(argv)


def table(runs: list[dict]) -> str:
    """Mean ± sd of the best validation accuracy per (preset, configuration), best first per preset."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        groups.setdefault((r["preset"], r["config"]), []).append(r["val_acc"])
    lines = ["| preset | configuration | seeds | best val acc % (mean ± sd) |", "|---|---|---|---|"]
    for (p, c), v in sorted(groups.items(), key=lambda kv: (kv[0][0], -statistics.mean(kv[1]))):
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(f"| {p} | {c} | {len(v)} | {100 * statistics.mean(v):.2f} ± {100 * sd:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    if args.merge:
        runs = [r for p in args.merge for r in json.loads(p.read_text())["runs"]]
        text = table(runs)
        print(text)
        return text
    if not args.preset:
        raise SystemExit("--preset is required (or --merge)")
    bench = _presets_module()
    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    teacher_path, info = bench.cached_teacher(args, args.cache_dir)
    teacher = bench.load_teacher(teacher_path)
    splits = bench.load_data(args.data)
    runs = []
    with tempfile.TemporaryDirectory(prefix="kdc-tune-") as tmp:
        for config in args.grid:
            sets = [] if config == "default" else [s for s in config.split(",") if s]
            for seed in args.seeds:
                ns = argparse.Namespace(student=args.student, epochs=args.epochs, set=sets, device=args.device)
                r = bench.run_one(args.preset, seed, ns, splits, teacher, Path(tmp))
                runs.append({"preset": args.preset, "config": config, "seed": seed, "val_acc": r["val_acc"],
                             "best_epoch": r["best_epoch"], "seconds": r["seconds"]})
                print(f"{args.preset} [{config}] seed {seed}: best val {100 * r['val_acc']:.2f}% "
                      f"(epoch {r['best_epoch']}, {r['seconds']:.0f} s)", flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"runs": runs}, indent=1))
    text = (f"# tune {args.preset} on {args.data} validation, {started:%Y-%m-%d %H:%M} UTC; teacher "
            f"{args.teacher_arch} ({args.teacher_epochs} ep), student {args.student}, {args.epochs} epochs, "
            f"seeds {args.seeds}\n" + table(runs))
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "teacher": info,
                                         "runs": runs}, indent=1))
    return text


if __name__ == "__main__":
    main()
