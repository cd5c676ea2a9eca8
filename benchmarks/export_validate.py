"""Export/validate benchmarks: ORT vs PyTorch eager, ORT settings sweep, INT8 vs FP32.

    python benchmarks/export_validate.py [--only ratio,sweep,int8]

1. ratio: ORT CPU p50 / PyTorch eager p50 at batch 1, 1 thread, each engine in its own fresh process, for
   digits-trained students and zoo models (goal: median <= 0.5).
2. sweep: kdcompress's ORT settings (ortbench.make_session: 1 intra-op thread, ORT_ENABLE_ALL) against
   every thread count up to the CPU limit x graph-optimisation level, one process per setting
   (goal: chosen p50 within 10% of the best).
3. int8: INT8 (kdcompress export: quant_pre_process + static QDQ per-channel U8/S8) / FP32 p50 at batch 1
   (each in its own process) and the test-accuracy drop on digits; resnet18 (random init, 3x224x224,
   calibrated on random inputs) for latency only (goal: <= 0.35, <= 1 point).

Every timing is ortbench.measure_latency (the one harness: 20 warm-up runs, then >= 100 runs and >= 0.3 s);
PyTorch is timed through the same function via a tiny session-like adaptor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("disable", "basic", "extended", "all")


# ------------------------------------------------------------------------------------------ children


class _TorchSession:
    """The subset of onnxruntime.InferenceSession that measure_latency touches, over a torch module."""

    class _Arg:
        def __init__(self, name: str):
            self.name, self.type = name, "tensor(float)"

    def __init__(self, model):
        self.model = model

    def get_inputs(self):
        return [self._Arg("input")]

    def get_outputs(self):
        return [self._Arg("logits")]

    def run(self, _names, feed):
        import torch

        with torch.inference_mode():
            return [self.model(torch.from_numpy(feed["input"]))]


def _child(args) -> None:
    """Runs in a fresh process: time one engine, print one JSON line."""
    spec = json.loads(args.child)
    shape = tuple(spec["shape"])
    if spec["engine"] == "torch":
        import torch

        from kdcompress.runtime.ortbench import measure_latency

        torch.set_num_threads(1)
        model = _build(spec["model"], spec["classes"], shape)
        model.load_state_dict(torch.load(spec["weights"], weights_only=True))
        stats = measure_latency(_TorchSession(model.eval()), (1, *shape))
    else:
        import onnxruntime as ort

        from kdcompress.runtime.ortbench import make_session, measure_latency

        if spec.get("level"):
            so = ort.SessionOptions()
            so.intra_op_num_threads = spec["threads"]
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = {
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[spec["level"]]
            sess = ort.InferenceSession(spec["onnx"], sess_options=so, providers=["CPUExecutionProvider"])
        else:  # exactly what kdcompress select/validate use
            sess = make_session(Path(spec["onnx"]), "cpu", spec.get("threads"))
        stats = measure_latency(sess, (1, *shape))
    print(json.dumps({"p50": stats.p50, "p90": stats.p90, "iters": stats.iters}))


def _run_child(**spec) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if spec["engine"] == "torch" else dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ models


def _build(name: str, classes: int, shape):
    import torch

    torch.manual_seed(0)
    if name.startswith("tv:"):
        import torchvision

        return torchvision.models.get_model(name[3:], weights=None, num_classes=classes)
    from kdcompress.core.spec import InputSpec
    from kdcompress.students.registry import build_student

    c = shape[0]
    return build_student(name, classes, InputSpec(tuple(shape), (0.5,) * c, (0.25,) * c))


def _randomise_bn(model) -> None:
    import torch

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _digits_students(tmp: Path) -> list[tuple[str, Path]]:
    from rich.console import Console

    from kdcompress.losses import load_checked_preset
    from kdcompress.pipeline import train_teacher

    out = []
    for arch in ("tinycnn_w16", "resnet8", "resnet8x4"):
        ck = tmp / f"digits_{arch}.pt"
        preset = load_checked_preset("ce", ["train.epochs=15", "train.schedule=cosine"])
        train_teacher(data="digits", arch=arch, preset=preset, out=ck, device="cpu",
                      console=Console(stderr=True, quiet=True))
        out.append((arch, ck))
    return out


def _export_plain(name: str, model, shape, tmp: Path) -> tuple[Path, Path]:
    import torch

    from kdcompress.runtime.onnxio import onnx_bytes
    from kdcompress.core.spec import InputSpec

    c = shape[0]
    path = tmp / f"{name.replace(':', '_')}.onnx"
    path.write_bytes(onnx_bytes(model, InputSpec(tuple(shape), (0.5,) * c, (0.25,) * c)))
    weights = tmp / f"{name.replace(':', '_')}.weights.pt"
    torch.save(model.state_dict(), weights)
    return path, weights


# ------------------------------------------------------------------------------------------ sections


ZOO = [("tinycnn_w16", 10, (3, 32, 32)), ("resnet8", 100, (3, 32, 32)), ("resnet20", 100, (3, 32, 32)),
       ("resnet8x4", 100, (3, 32, 32)), ("tv:mobilenet_v3_small", 1000, (3, 224, 224)),
       ("tv:resnet18", 1000, (3, 224, 224))]


def bench_ratio(tmp: Path, digits: list[tuple[str, Path]]) -> None:
    from kdcompress.students.checkpoint import load_checkpoint

    rows = []
    for arch, ck in digits:
        model, obj = load_checkpoint(ck)
        onnx_path, weights = _export_plain(f"digits_{arch}", model, (1, 8, 8), tmp)
        rows.append((f"digits student {arch}", arch, 10, (1, 8, 8), onnx_path, weights))
    for name, classes, shape in ZOO:
        model = _build(name, classes, shape).eval()
        _randomise_bn(model)
        onnx_path, weights = _export_plain(name, model, shape, tmp)
        rows.append((name, name, classes, shape, onnx_path, weights))
    print("\n### ORT CPU vs PyTorch eager, batch 1, 1 thread, each engine in its own process\n")
    print("| model | input | torch p50 ms | ORT p50 ms | ORT/torch |")
    print("|---|---|---:|---:|---:|")
    ratios = []
    for label, name, classes, shape, onnx_path, weights in rows:
        t = _run_child(engine="torch", model=name, classes=classes, shape=list(shape), weights=str(weights))
        o = _run_child(engine="ort", onnx=str(onnx_path), shape=list(shape), threads=1)
        ratios.append(o["p50"] / t["p50"])
        print(f"| {label} | {'x'.join(map(str, shape))} | {t['p50']:.4f} | {o['p50']:.4f} | {ratios[-1]:.2f} |",
              flush=True)
    med = statistics.median(ratios)
    print(f"\nmedian ORT/torch = {med:.2f} (goal <= 0.5: {'met' if med <= 0.5 else 'NOT met'})")
    return rows


def bench_sweep(tmp: Path, rows) -> None:
    from kdcompress.core.system import cpu_limit

    pick = [r for r in rows if r[0] in ("digits student resnet8", "resnet20", "tv:mobilenet_v3_small", "tv:resnet18")]
    threads = list(range(1, cpu_limit() + 1))
    print(f"\n### ORT settings: kdcompress's choice (1 thread, ORT_ENABLE_ALL) vs threads {threads} x "
          f"{len(LEVELS)} optimisation levels, p50 ms at batch 1, one process per setting\n")
    print("| model | " + " | ".join(f"{t}t/{lv}" for t in threads for lv in LEVELS)
          + " | chosen | best | chosen/best |")
    print("|---|" + "---:|" * (len(threads) * len(LEVELS) + 3))
    for label, _name, _c, shape, onnx_path, _w in pick:
        grid = {(t, lv): _run_child(engine="ort", onnx=str(onnx_path), shape=list(shape), threads=t, level=lv)["p50"]
                for t in threads for lv in LEVELS}
        chosen = _run_child(engine="ort", onnx=str(onnx_path), shape=list(shape), threads=None)["p50"]
        best = min([*grid.values(), chosen])
        cells = " | ".join(f"{grid[(t, lv)]:.4f}" for t in threads for lv in LEVELS)
        print(f"| {label} | {cells} | {chosen:.4f} | {best:.4f} | {chosen / best:.2f} |", flush=True)


def bench_int8(tmp: Path, digits: list[tuple[str, Path]]) -> None:
    import numpy as np
    import torch

    from kdcompress.runtime.onnxio import build_metadata
    from kdcompress.runtime.ortbench import make_session
    from kdcompress.core.spec import InputSpec
    from kdcompress.data.specs import load_data
    from kdcompress.export.onnx import ExportOptions, calibration_images, export_variants
    from kdcompress.students.checkpoint import load_checkpoint
    from kdcompress.validate.models import accuracy_metrics, describe, onnx_logits

    print("\n### INT8 (static QDQ, per-channel, U8 activations / S8 weights) vs FP32, batch 1, 1 thread\n")
    print("| model | input | calib images | FP32 p50 ms | INT8 p50 ms | INT8/FP32 | FP32 top-1 | INT8 top-1 | "
          "drop (pts) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    splits = load_data("digits")
    opts = ExportOptions(int8=True, calib=64)
    for arch, ck in digits:
        model, obj = load_checkpoint(ck)
        spec = InputSpec.from_json(obj["input_spec"])
        arts = export_variants(model, spec, tmp / f"q_{arch}.onnx", opts,
                               build_metadata(arch=arch, classes=splits.classes, spec=spec, preset="ce",
                                              teacher_sha256=None),
                               calib=calibration_images(splits.train.x, spec, opts.calib))
        acc, lat = {}, {}
        for a in arts:
            logits = onnx_logits(make_session(a.path), describe(a.path), splits.test.x)
            acc[a.variant] = accuracy_metrics(logits, splits.test.y.numpy(), splits.classes).top1
            lat[a.variant] = _run_child(engine="ort", onnx=str(a.path), shape=[1, 8, 8], threads=1)["p50"]
        print(f"| digits student {arch} | 1x8x8 | {opts.calib} | {lat['fp32']:.4f} | {lat['int8']:.4f} | "
              f"{lat['int8'] / lat['fp32']:.2f} | {100 * acc['fp32']:.2f}% | {100 * acc['int8']:.2f}% | "
              f"{100 * (acc['fp32'] - acc['int8']):+.2f} |", flush=True)
    shape = (3, 224, 224)
    model = _build("tv:resnet18", 1000, shape).eval()
    _randomise_bn(model)
    spec = InputSpec(shape, (0.5,) * 3, (0.25,) * 3)
    calib = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
    with torch.no_grad():
        arts = export_variants(model, spec, tmp / "q_resnet18.onnx", ExportOptions(int8=True, calib=32),
                               build_metadata(arch="resnet18", classes=[str(i) for i in range(1000)], spec=spec,
                                              preset=None, teacher_sha256=None), calib=calib, probe=calib[:7])
    lat = {a.variant: _run_child(engine="ort", onnx=str(a.path), shape=list(shape), threads=1)["p50"] for a in arts}
    print(f"| tv:resnet18 (random init) | 3x224x224 | 32 (random) | {lat['fp32']:.4f} | {lat['int8']:.4f} | "
          f"{lat['int8'] / lat['fp32']:.2f} | – | – | – |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--only", default="ratio,sweep,int8")
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    import onnxruntime
    import torch

    from kdcompress.core.system import machine_fingerprint

    m = machine_fingerprint()
    print(f"## export_validate benchmarks — {datetime.date.today().isoformat()}, {m['cpu']}, {m['cpus']} CPU(s) "
          f"usable, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="kdc-bench-") as d:
        tmp = Path(d)
        digits = _digits_students(tmp)
        rows = bench_ratio(tmp, digits) if "ratio" in only or "sweep" in only else []
        if "sweep" in only:
            bench_sweep(tmp, rows)
        if "int8" in only:
            bench_int8(tmp, digits)


if __name__ == "__main__":
    main()
