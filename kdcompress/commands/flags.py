"""The typer option types shared by several commands (cli.py declares each command with them)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer


Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (created; rerunning resumes).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a preset value, e.g. kd.T=2, train.lr=0.1.")]
DistillSet = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Repeatable: a preset value (train.lr=0.1, kd.T=2; keys: kdcompress presets "
                                       "show NAME) or a job key (export.fp16=true, gate.min_agreement=0.9; keys: "
                                       "docs/cli.md).")]
Device = Annotated[str, typer.Option(help="Training device: auto, cpu or cuda.")]
Provider = Annotated[str, typer.Option(help="ONNX Runtime execution provider for latency: cpu, cuda, tensorrt.")]
Threads = Annotated[int | None, typer.Option(help="ORT intra-op threads for latency (default 1).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
TEACHER_PANEL = "Teacher file"  # the --help panel of the shared teacher flags


def _teacher_opt(flag: str, text: str) -> Any:
    return typer.Option(flag, rich_help_panel=TEACHER_PANEL, help=text)


TeacherArch = Annotated[str | None, _teacher_opt(
    "--teacher-arch", "Architecture of a weights-only teacher: a torchvision model (resnet18), timm:NAME (a timm "
                      "model) or a zoo name (resnet8x4); torchvision:NAME / zoo:NAME to disambiguate.")]
NumClasses = Annotated[int | None, _teacher_opt(
    "--num-classes", "Teacher's class count (when the file does not record it).")]
Classes = Annotated[str | None, _teacher_opt(
    "--classes", "Teacher's class names in output order: a,b,c or a text file with one per line.")]
InputShape = Annotated[str | None, _teacher_opt("--input-shape", "Teacher's input C,H,W, e.g. 3,224,224.")]
Mean = Annotated[str | None, _teacher_opt(
    "--mean", "Per-channel normalisation mean, e.g. 0.485,0.456,0.406 (overrides what the teacher file records; "
              "validate: every model's).")]
Std = Annotated[str | None, _teacher_opt(
    "--std", "Per-channel normalisation std, e.g. 0.229,0.224,0.225 (overrides what the teacher file records; "
             "validate: every model's).")]
Trust = Annotated[bool, _teacher_opt("--trust-checkpoint", "Allow pickled (code-carrying) teacher checkpoints.")]

# The one definition of the teacher flags: every command that reads a teacher (distill, select, validate,
# teacher inspect) takes exactly these, through `teacher_flags`, so a plain state_dict teacher works with each
# of them and a new command cannot drift. (parameter name, type, default)
TEACHER_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("teacher_arch", TeacherArch, None), ("num_classes", NumClasses, None), ("classes", Classes, None),
    ("input_shape", InputShape, None), ("mean", Mean, None), ("std", Std, None), ("trust_checkpoint", Trust, False),
)


def teacher_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a typer command the shared teacher flags: its `**teacher_flags` parameter is replaced, in the
    signature typer reads, by one keyword parameter per TEACHER_FLAGS entry (typer then passes them in it)."""
    sig = inspect.signature(command, eval_str=True)  # typer reads __signature__ as it is: no strings in it
    kept = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(kept) == len(sig.parameters):
        raise TypeError(f"{command.__name__} needs a **teacher_flags parameter to take the teacher flags")
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
             for name, kind, default in TEACHER_FLAGS]
    command.__signature__ = sig.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    command.__annotations__ = {**command.__annotations__, **{n: k for n, k, _ in TEACHER_FLAGS}}
    return command


def teacher_options(f: dict[str, Any]):
    """The parsed teacher flags of a command as core.config.TeacherOptions (validated there)."""
    from ..core.config import TeacherOptions

    return TeacherOptions.from_flags(arch=f["teacher_arch"], num_classes=f["num_classes"], classes=f["classes"],
                                     input_shape=f["input_shape"], mean=f["mean"], std=f["std"])


Fp16 = Annotated[bool, typer.Option("--fp16", help="Also export a float16 variant (float32 inputs/outputs).")]
Int8 = Annotated[bool, typer.Option("--int8", help="Also export a static INT8 (QDQ, per-channel) variant.")]
Calib = Annotated[int, typer.Option("--calib", help="Training images that calibrate INT8.")]
Simplify = Annotated[bool, typer.Option("--simplify", help="Simplify the graph with onnxslim.")]
Precision = Annotated[str, typer.Option(
    help="Precision the student ships in, measured as such: fp32, int8 (static QDQ), fp16 (GPU providers only) "
         "or auto (the most capable fit over all of them).")]
LatencyTable = Annotated[Path | None, typer.Option(
    "--latency-table", help="Select from latency.json written by `kdcompress profile` on the target instead of "
                            "measuring here.")]
Tune = Annotated[bool, typer.Option(
    "--tune/--no-tune", help="Sweep ORT session settings (threads, optimisation level, execution mode) for the "
                             "candidates near the choice; the best go into the ONNX metadata.")]
MinAgreement = Annotated[float | None, typer.Option(
    "--min-agreement", help="Gate: top-1 agreement with the PyTorch model >= X (fraction).")]
MaxAccuracyDrop = Annotated[float | None, typer.Option(
    "--max-accuracy-drop", help="Gate: teacher top-1 minus variant top-1 <= X (fraction; 0.01 = 1 point).")]


