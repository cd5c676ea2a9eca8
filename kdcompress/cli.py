"""Command-line interface: parse flags, look the command up in kdcompress.commands.COMMANDS, run it.

torch and friends are imported inside the commands, so `kdcompress --help` answers instantly.
Every failure is one line on stderr, `kdcompress: error: ...`, with its documented exit code: KdErrors
from the stages, and flag errors (a wrong type, a missing or unknown option) from the parser alike. No
traceback reaches the user (KDCOMPRESS_DEBUG=1 shows one for an unexpected internal error). stdout holds
only the result: a table, or one strict-JSON object with --json.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_errors  # typer 0.29 vendors click (pinned in pyproject)
from typer.core import TyperGroup

from .core.errors import KdError

INTERNAL_ERROR = 70


def _fail(message: str, code: int) -> None:
    # under torchrun (TORCHELASTIC_RUN_ID set) the first process speaks for all; every process exits with the code
    if not os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"kdcompress: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """Flag errors (`--budget-ms abc`, an unknown option) as the same one line as every other error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:  # `kdcompress` alone: the help, as before
            e.show()
            rv = e.exit_code
        except click_errors.ClickException as e:
            try:
                _fail(e.format_message(), 2)
            except typer.Exit as x:
                rv = x.exit_code
        except typer.Abort:
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors,
                  help="Distil an image classifier into a small student that meets a measured latency budget.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train or inspect teachers.")
presets_app = typer.Typer(no_args_is_help=True, help="List and show the built-in KD presets.")
app.add_typer(teacher_app, name="teacher")
app.add_typer(presets_app, name="presets")


def run_guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except typer.Exit:
        raise
    except KdError as e:
        if e.quiet:  # another process of a torchrun job reports it
            raise typer.Exit(e.exit_code) from None
        _fail(e.message, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    except Exception as e:
        if os.environ.get("KDCOMPRESS_DEBUG"):
            raise
        text = " ".join(str(e).split())
        _fail(f"internal error: {type(e).__name__}: {text[:2000]} (set KDCOMPRESS_DEBUG=1 for the traceback)",
              INTERNAL_ERROR)


def strict_json(obj: Any) -> Any:
    """NaN and +-inf become null: stdout and every file hold strict JSON, never a NaN token."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def _dispatch(name: str, flags: dict[str, Any]) -> None:
    """Run command `name` with the parsed flags; print its JSON or its table; then its check (gates)."""
    flags = dict(flags)
    as_json = bool(flags.pop("json_", False))

    def go() -> None:
        from rich.console import Console

        from .commands import resolve

        outcome = resolve(name)(flags, Console(stderr=True))
        if outcome.result is None:  # a torchrun process other than rank 0
            return
        if as_json:
            _print_json(outcome.result)
        elif outcome.show is not None:
            outcome.show()
        if outcome.check is not None:
            outcome.check()

    run_guarded(go)


# ------------------------------------------------------------------------------------------ options

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
MinAgreement = Annotated[float | None, typer.Option(
    "--min-agreement", help="Gate: top-1 agreement with the PyTorch model >= X (fraction).")]
MaxAccuracyDrop = Annotated[float | None, typer.Option(
    "--max-accuracy-drop", help="Gate: teacher top-1 minus variant top-1 <= X (fraction; 0.01 = 1 point).")]


# ------------------------------------------------------------------------------------------ distill


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="Teacher: kdcompress checkpoint, state_dict or .safetensors (+ --teacher-arch), dict or Lightning checkpoint, Hugging Face-style folder, TorchScript or .onnx.")],
    data: Annotated[str, typer.Option(help="Dataset spec: digits, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, cifar10:/root, cifar100:/root, mnist:/root, fashionmnist:/root.")],
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Latency budget per image, ms.")] = None,
    preset: Annotated[str, typer.Option(help="Preset name or a .toml path.")] = "kd",
    student: Annotated[str | None, typer.Option(help="Skip selection and use this student.")] = None,
    student_init: Annotated[str | None, typer.Option("--student-init", help="Initial student weights: a state_dict file for the chosen student, or 'pretrained' (timm/torchvision students; local caches only unless --download).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the preset's).")] = None,
    stat: Annotated[str, typer.Option(help="Latency statistic the budget applies to: p50 or p90.")] = "p50",
    device: Device = "auto",
    provider: Provider = "cpu",
    threads: Threads = None,
    out: Out = Path("runs/distill"),
    set_: SetOpt = None,
    trust_checkpoint: Trust = False,
    restart: Annotated[bool, typer.Option(help="Discard this run directory's checkpoints and start over.")] = False,
    teacher_arch: TeacherArch = None,
    num_classes: NumClasses = None,
    classes: Classes = None,
    input_shape: InputShape = None,
    mean: Mean = None,
    std: Std = None,
    download: Annotated[bool, typer.Option("--download", help="Let cifar10/cifar100/mnist/fashionmnist download into their root, and --student-init pretrained fetch weights.")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the student's training forward (faster steps on a GPU after a compile pause).")] = False,
    fp16: Fp16 = False,
    int8: Int8 = False,
    calib: Calib = 64,
    simplify: Simplify = False,
    min_agreement: MinAgreement = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    json_: Json = False,
) -> None:
    """The whole job: teacher -> select -> distill -> export -> validate -> report.

    --budget-ms is both the selection budget and a gate on the validated student; a failed gate exits 5
    after report.json is written.
    On several GPUs or machines: torchrun --nproc_per_node N -m kdcompress distill ... (docs/distributed.md)."""
    _dispatch("distill", locals())


# ------------------------------------------------------------------------------------------ export / validate / report


@app.command()
def export(
    run: Annotated[Path | None, typer.Option(help="Run directory whose student.pt to export.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A kdcompress student checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="fp32 ONNX path (variants go beside it).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset spec for INT8 calibration and test-split checks "
                                                  "(default: the run's).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher file, for the checksum in the metadata.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).")] = 20,
    fp16: Fp16 = False,
    int8: Int8 = False,
    calib: Calib = 64,
    simplify: Simplify = False,
    json_: Json = False,
) -> None:
    """Export a student to ONNX (dynamic batch, metadata, checked) with optional fp16/int8 variants."""
    _dispatch("export", locals())


@app.command()
def validate(
    onnx: Annotated[list[Path], typer.Option("--onnx", help="ONNX classifier(s) to validate; repeat for variants.")],
    data: Annotated[str, typer.Option(help="Dataset spec; its test split is used.")],
    teacher: Annotated[Path | None, typer.Option(help="Teacher (kdcompress .pt or .onnx), measured identically.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="The student's PyTorch checkpoint, for parity.")] = None,
    provider: Provider = "cpu",
    threads: Threads = None,
    min_agreement: MinAgreement = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Gate: latency <= X ms.")] = None,
    stat: Annotated[str, typer.Option(help="Latency statistic the budget applies to: p50, p90 or p99.")] = "p50",
    mean: Annotated[str | None, typer.Option(help="Normalisation mean, e.g. 0.485,0.456,0.406 (overrides metadata).")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std (overrides metadata).")] = None,
    layout: Annotated[str | None, typer.Option(help="Input layout NCHW or NHWC (default: metadata or graph).")] = None,
    throughput_batch: Annotated[int, typer.Option(help="Batch size for the throughput measurement.")] = 32,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write report.json, report.md and plots here.")] = None,
    json_: Json = False,
) -> None:
    """Accuracy, parity, latency and gates of any ONNX image classifier in ONNX Runtime (exit 5: a gate failed)."""
    _dispatch("validate", locals())


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory (or a validate --out directory) holding report.json.")],
    json_: Json = False,
) -> None:
    """Re-render report.md and the plots from report.json."""
    _dispatch("report", locals())


# ------------------------------------------------------------------------------------------ select


@app.command("select")
def select_cmd(
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (kdcompress format); sets the input shape.")],
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Latency budget per batch, ms; "
                                                    "without it the measured ladder is printed, nothing chosen.")] = None,
    stat: Annotated[str, typer.Option(help="Latency statistic the budget applies to: p50 or p90.")] = "p50",
    batch: Annotated[int, typer.Option(help="Batch size the latency is measured at.")] = 1,
    provider: Provider = "cpu",
    threads: Annotated[int | None, typer.Option(help="ORT intra-op threads (default 1; capped at the CPU limit).")] = None,
    candidates: Annotated[str | None, typer.Option(help="Comma-separated student names to measure instead of "
                                                   "the whole plausible zoo.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-measure everything; neither read nor write the latency cache.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for selection.json and selection.png.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow pickled (code-carrying) checkpoints.")] = False,
    json_: Json = False,
) -> None:
    """Measure every plausible student in ONNX Runtime at the teacher's input shape and pick the most
    capable one (FLOPs, then params) that meets the budget."""
    _dispatch("select", locals())


# ------------------------------------------------------------------------------------------ teacher


@teacher_app.command("train")
def teacher_train(
    data: Annotated[str, typer.Option(help="Dataset spec.")] = "digits",
    arch: Annotated[str, typer.Option(help="Architecture from the zoo (kdcompress students list).")] = "resnet8x4",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the teacher checkpoint.")] = Path("teacher.pt"),
    device: Device = "auto",
    set_: SetOpt = None,
    json_: Json = False,
) -> None:
    """Train a reference teacher with cross-entropy and save it in kdcompress's checkpoint format."""
    _dispatch("teacher train", locals())


@teacher_app.command("inspect")
def teacher_inspect(
    teacher: Annotated[Path, typer.Argument(help="Teacher file in any supported format.")],
    teacher_arch: TeacherArch = None,
    num_classes: NumClasses = None,
    classes: Classes = None,
    input_shape: InputShape = None,
    mean: Mean = None,
    std: Std = None,
    trust_checkpoint: Trust = False,
    provider: Provider = "cpu",
    threads: Threads = None,
    json_: Json = False,
) -> None:
    """Format, architecture, size, classes, input spec, features, and latency measured in ONNX Runtime."""
    _dispatch("teacher inspect", locals())


# ------------------------------------------------------------------------------------------ doctor


@app.command()
def doctor(json_: Json = False) -> None:
    """Versions, GPUs, ONNX Runtime providers (and which really start), faiss, CPU limits, conflicts."""
    _dispatch("doctor", locals())


# ------------------------------------------------------------------------------------------ demo


@app.command()
def demo(
    out: Out = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Student training epochs.")] = 20,
    json_: Json = False,
) -> None:
    """Digits end to end: train (or reuse) a teacher, budget = 1/3 of its latency, distill with kd."""
    _dispatch("demo", locals())


# ------------------------------------------------------------------------------------------ presets


@presets_app.command("list")
def presets_list(json_: Json = False) -> None:
    """Every built-in preset with its description."""
    _dispatch("presets list", locals())


@presets_app.command("show")
def presets_show(name: str, json_: Json = False) -> None:
    """Terms, weights, warm-up and parameters of a preset (a built-in name or a .toml path)."""
    _dispatch("presets show", locals())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
