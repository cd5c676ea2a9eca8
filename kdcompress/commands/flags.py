"""The typer option types shared by several commands (cli.py declares each command with them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (created; rerunning resumes).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a preset value, e.g. kd.T=2, train.lr=0.1.")]
Device = Annotated[str, typer.Option(help="Training device: auto, cpu or cuda.")]
Provider = Annotated[str, typer.Option(help="ONNX Runtime execution provider for latency: cpu, cuda, tensorrt.")]
Threads = Annotated[int | None, typer.Option(help="ORT intra-op threads for latency (default 1).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
TeacherArch = Annotated[str | None, typer.Option("--teacher-arch", help="Architecture of a weights-only teacher: a torchvision model (resnet18), timm:NAME (a timm model) or a zoo name (resnet8x4); torchvision:NAME / zoo:NAME to disambiguate.")]
NumClasses = Annotated[int | None, typer.Option("--num-classes", help="Teacher's class count (when the file does not record it).")]
Classes = Annotated[str | None, typer.Option("--classes", help="Teacher's class names in output order: a,b,c or a text file with one per line.")]
InputShape = Annotated[str | None, typer.Option("--input-shape", help="Teacher's input C,H,W, e.g. 3,224,224.")]
Mean = Annotated[str | None, typer.Option("--mean", help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406.")]
Std = Annotated[str | None, typer.Option("--std", help="Per-channel normalisation std, e.g. 0.229,0.224,0.225.")]
Trust = Annotated[bool, typer.Option(help="Allow pickled (code-carrying) checkpoints.")]


Fp16 = Annotated[bool, typer.Option("--fp16", help="Also export a float16 variant (float32 inputs/outputs).")]
Int8 = Annotated[bool, typer.Option("--int8", help="Also export a static INT8 (QDQ, per-channel) variant.")]
Calib = Annotated[int, typer.Option("--calib", help="Training images that calibrate INT8.")]
Simplify = Annotated[bool, typer.Option("--simplify", help="Simplify the graph with onnxslim.")]
Precision = Annotated[str, typer.Option(
    help="Precision the student ships in, measured as such: fp32, int8 (static QDQ), fp16 (GPU providers only) "
         "or auto (the most capable fit over all of them).")]
LatencyTable = Annotated[Path | None, typer.Option(
    "--latency-table", help="Select from latency.json written by `kdcompress profile` on the target instead of measuring here.")]
Tune = Annotated[bool, typer.Option("--tune/--no-tune", help="Sweep ORT session settings (threads, optimisation level, "
                                    "execution mode) for the candidates near the choice; the best go into the ONNX metadata.")]
MinAgreement = Annotated[float | None, typer.Option(
    "--min-agreement", help="Gate: top-1 agreement with the PyTorch model >= X (fraction).")]
MaxAccuracyDrop = Annotated[float | None, typer.Option(
    "--max-accuracy-drop", help="Gate: teacher top-1 minus variant top-1 <= X (fraction; 0.01 = 1 point).")]


