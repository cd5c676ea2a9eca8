"""Command-line interface: parse flags, look the command up in kdcompress.commands.COMMANDS, run it.

torch and friends are imported inside the commands, so `kdcompress --help` answers instantly.
Every failure is one line on stderr, `kdcompress: error: ...`, with its documented exit code: KdErrors
from the stages, and flag errors (a wrong type, a missing or unknown option) from the parser alike. No
traceback reaches the user (KDCOMPRESS_DEBUG=1 shows one for an unexpected internal error). stdout holds
only the result: a table, or one strict-JSON object with --json.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_errors  # typer 0.29 vendors click (pinned in pyproject)
from typer.core import TyperGroup

from .core.errors import KdError
from .core.runio import strict_json
from .core.system import exit_now

INTERNAL_ERROR = 70


def _silent_rank() -> bool:
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and os.environ.get("RANK", "0") != "0"


def _leave_last() -> None:
    """The silent ranks of a torchrun job exit last: torchrun stops the other workers at the first exit and
    reports that one as the root cause, so rank 0 must have printed its line and exited first."""
    if _silent_rank():
        import time

        time.sleep(RANK_EXIT_DELAY_S)


def _fail(message: str, code: int) -> None:
    # under torchrun (TORCHELASTIC_RUN_ID set) the first process speaks for all; every process exits with the code
    if not _silent_rank():
        sys.stderr.write(f"kdcompress: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    _leave_last()
    raise typer.Exit(code)


RANK_EXIT_DELAY_S = 2.0


PATH_FLAGS = ("--out", "-o", "--teacher", "--checkpoint", "--run", "--onnx")


def _refuse_empty_paths(args: list[str]) -> None:
    """`--out ""` would become Path("."), the current directory: an empty path flag is a usage error."""
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag in PATH_FLAGS and ((eq and not value.strip())
                                   or (not eq and i + 1 < len(args) and not args[i + 1].strip())):
            _fail(f"{flag} is empty; give a path", 2)


class OneLineErrors(TyperGroup):
    """Flag errors (`--budget-ms abc`, an unknown option) as the same one line as every other error."""

    def main(self, args: Any = None, *rest: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            _refuse_empty_paths(sys.argv[1:] if args is None else list(args))
            rv = super().main(args, *rest, standalone_mode=False, **kwargs)
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
        except typer.Exit as x:
            rv = x.exit_code
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors,
                  help="Distil an image classifier into a small student that meets a measured latency budget.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train or inspect teachers.")
presets_app = typer.Typer(no_args_is_help=True, help="List and show the built-in KD presets.")
app.add_typer(teacher_app, name="teacher")
app.add_typer(presets_app, name="presets")
students_app = typer.Typer(no_args_is_help=True, help="The student zoo selection chooses from.")
app.add_typer(students_app, name="students")


def run_guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except typer.Exit:
        raise
    except KdError as e:
        if e.quiet:  # another process of a torchrun job reports it
            _leave_last()
            raise typer.Exit(e.exit_code) from None
        _fail(e.message, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    except Exception as e:
        if os.environ.get("KDCOMPRESS_DEBUG"):
            raise
        mapped = resource_error(e)
        if mapped is not None:  # disk full, permission denied, a directory, out of memory: the documented code
            _fail(mapped.message, mapped.exit_code)
        text = " ".join(str(e).split())
        _fail(f"internal error: {type(e).__name__}: {text[:2000]} (set KDCOMPRESS_DEBUG=1 for the traceback)",
              INTERNAL_ERROR)


def resource_error(e: BaseException) -> KdError | None:
    """An OS or allocation failure that escaped a stage, as the KdError of its documented exit code."""
    from .core.errors import EnvironmentProblem
    from .core.runio import os_error

    if isinstance(e, OSError) and e.errno is not None:
        return os_error(e, e.filename, "at")
    if isinstance(e, MemoryError):
        return EnvironmentProblem("out of memory; use smaller inputs or a smaller batch")
    text = str(e)
    if isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                        or "not enough memory" in text):
        first = " ".join(text.split())[:300]
        return EnvironmentProblem(f"out of memory: {first}; use smaller inputs or a smaller batch")
    return None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def _given_flags(ctx: typer.Context) -> frozenset[str]:
    """The parameters the command line itself set (not defaults): what --config must not override."""
    return frozenset(n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE")


def _dispatch(name: str, flags: dict[str, Any]) -> None:
    """Run command `name` with the parsed flags; print its JSON or its table; then its check (gates)."""
    flags = dict(flags)
    flags.update(flags.pop("teacher_flags", None) or {})  # the shared teacher flags (commands.flags.teacher_flags)
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


from .commands.flags import (Out, SetOpt, DistillSet, Device, Provider, Threads, Json, Calib, Fp16,  # noqa: E402
                             Int8, Simplify, Precision, LatencyTable, Tune, MinAgreement, MaxAccuracyDrop,
                             teacher_flags)
from .commands.jobkeys import job_flags  # noqa: E402


# ------------------------------------------------------------------------------------------ distill


@app.command()
@teacher_flags
@job_flags
def distill(
    ctx: typer.Context,
    teacher: Annotated[Path | None, typer.Option(
        help="Teacher: kdcompress checkpoint, state_dict or .safetensors (+ --teacher-arch), dict or Lightning "
             "checkpoint, Hugging Face-style folder, TorchScript or .onnx.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Dataset spec: digits, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, "
             "cifar10:/root, cifar100:/root, mnist:/root, fashionmnist:/root.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Redo the job a run's config.json records (flags given here win).")] = None,
    budget_ms: Annotated[float | None, typer.Option(
        "--budget-ms", help="Latency budget per image, ms (p50; --set select.stat=p90 for another).")] = None,
    preset: Annotated[str, typer.Option(help="Preset name, a .toml path, or auto (rank presets by short trials on "
                                             "the validation split; --set auto.presets=a,b).")] = "kd",
    student: Annotated[str | None, typer.Option(help="Skip selection and use this student.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the preset's).")] = None,
    device: Device = "auto",
    provider: Provider = "cpu",
    precision: Precision = "fp32",
    latency_table: LatencyTable = None,
    out: Out = Path("runs/distill"),
    set_: DistillSet = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard this run directory's outputs and checkpoints "
                                          "(only files kdcompress wrote) and start over.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out that is not a kdcompress "
                                        "run (nothing in it is deleted).")] = False,
    json_: Json = False,
    **teacher_flags: Any,
) -> None:
    """The whole job: teacher -> select -> distill -> export -> validate -> report.

    --budget-ms is both the selection budget and a gate on the validated
    student; a failed gate exits 5 after report.json is written.

    Rarely used options are --set job keys (export.fp16=true, select.rank=trial,
    gate.min_agreement=0.9, ...), listed in docs/cli.md.

    On several GPUs: torchrun --nproc_per_node N -m kdcompress distill ...
    (docs/distributed.md)."""
    _dispatch("distill", {**{k: v for k, v in locals().items() if k != "ctx"}, "_given": _given_flags(ctx)})


# ------------------------------------------------------------------------------------------ export / validate / report


@app.command()
def export(
    run: Annotated[Path | None, typer.Option(help="Run directory whose student.pt to export.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A kdcompress student checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="fp32 ONNX path (variants go beside it).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset spec for INT8 calibration and test-split checks "
                                                  "(default: the run's).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="Teacher file, for the checksum in the metadata.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset: 18 up to the newest this ONNX Runtime runs.")] = 20,
    fp16: Fp16 = False,
    int8: Int8 = False,
    calib: Calib = 64,
    simplify: Simplify = False,
    json_: Json = False,
) -> None:
    """Export a student to ONNX (dynamic batch, metadata, checked) with optional fp16/int8 variants."""
    _dispatch("export", locals())


@app.command()
@teacher_flags
def validate(
    onnx: Annotated[list[Path], typer.Option("--onnx", help="ONNX classifier(s) to validate; repeat for variants.")],
    data: Annotated[str, typer.Option(help="Dataset spec; its test split is used.")],
    teacher: Annotated[Path | None, typer.Option(help="Teacher in any supported format (+ the teacher flags), "
                                                      "measured identically.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="The student's PyTorch checkpoint, for parity.")] = None,
    provider: Provider = "cpu",
    threads: Threads = None,
    min_agreement: MinAgreement = None,
    max_accuracy_drop: MaxAccuracyDrop = None,
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Gate: latency <= X ms.")] = None,
    stat: Annotated[str, typer.Option(help="Latency statistic the budget applies to: p50, p90 or p99.")] = "p50",
    layout: Annotated[str | None, typer.Option(help="Input layout NCHW or NHWC (default: metadata or graph).")] = None,
    throughput_batch: Annotated[int, typer.Option(help="Batch size for the throughput measurement.")] = 32,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write report.json, report.md and plots here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out that is not a kdcompress "
                                        "directory (nothing in it is deleted).")] = False,
    json_: Json = False,
    **teacher_flags: Any,
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
@teacher_flags
def select_cmd(
    teacher: Annotated[Path, typer.Option(help="Teacher in any supported format (+ the teacher flags); sets the "
                                               "input shape.")],
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Latency budget per batch, ms; without it "
                                                    "the measured ladder is printed, nothing chosen.")] = None,
    stat: Annotated[str, typer.Option(help="Latency statistic the budget applies to: p50, p90 or p99.")] = "p50",
    batch: Annotated[int, typer.Option(help="Batch size the latency is measured at.")] = 1,
    provider: Provider = "cpu",
    threads: Annotated[int | None, typer.Option(
        help="ORT intra-op threads (default 1; capped at the CPU limit).")] = None,
    candidates: Annotated[str | None, typer.Option(help="Comma-separated student names to measure instead of "
                                                   "the whole plausible zoo.")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Re-measure everything; neither read nor write the latency cache.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Directory for selection.json and selection.png.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out that is not a kdcompress "
                                        "directory (nothing in it is deleted).")] = False,
    precision: Precision = "fp32",
    latency_table: LatencyTable = None,
    export_candidates: Annotated[Path | None, typer.Option(
        "--export-candidates", help="Write the candidate ladder as ONNX files + manifest.json to DIR (for "
                                    "`kdcompress profile DIR` on the target) instead of measuring.")] = None,
    tune: Tune = True,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Measure every candidate, also those bigger than a "
                                           "same-family one already over budget.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes for --export-candidates' ONNX exports (default: the "
                                                     "CPU limit); measuring exports in-process.")] = None,
    json_: Json = False,
    **teacher_flags: Any,
) -> None:
    """Measure every plausible student in ONNX Runtime at the teacher's input shape and pick the most
    capable one (FLOPs, then params) that meets the budget."""
    _dispatch("select", locals())


@app.command()
def profile(
    directory: Annotated[Path, typer.Argument(help="Directory written by `kdcompress select --export-candidates`.")],
    provider: Provider = "cpu",
    threads: Annotated[int | None, typer.Option(help="ORT intra-op threads without --tune (default 1).")] = None,
    tune: Annotated[bool, typer.Option(
        "--tune/--no-tune", help="Sweep ORT settings per model and keep the best.")] = True,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the table (default DIR/latency.json).")] = None,
    processes: Annotated[int, typer.Option(help="Fresh processes per model; its figure is the slowest of them.")] = 5,
    json_: Json = False,
) -> None:
    """Time the exported candidates on THIS machine (the target) with only onnxruntime and numpy, each in
    several fresh processes; write latency.json (p50/p90/p99 per model, provider, settings, machine) for
    --latency-table."""
    _dispatch("profile", locals())


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="An exported .onnx file or a kdcompress checkpoint (student.pt).")],
    images: Annotated[Path, typer.Argument(metavar="INPUT",
                                           help="An image, a folder of images, or a CSV whose first column is paths.")],
    topk: Annotated[int, typer.Option(help="Classes per image, most probable first.")] = 5,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean, for an ONNX file that records none.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, for an ONNX file that records none.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write every prediction to a .csv or .json file.")] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads.")] = None,
    json_: Json = False,
) -> None:
    """Top-k predictions with the preprocessing the model's metadata records (size, channels, mean/std, layout)."""
    _dispatch("predict", locals())


# ------------------------------------------------------------------------------------------ teacher


@teacher_app.command("train")
def teacher_train(
    data: Annotated[str, typer.Option(help="Dataset spec.")] = "digits",
    arch: Annotated[str, typer.Option(help="Architecture from the zoo (kdcompress students list).")] = "resnet8x4",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Where to write the teacher checkpoint.")] = Path("teacher.pt"),
    device: Device = "auto",
    set_: SetOpt = None,
    json_: Json = False,
) -> None:
    """Train a reference teacher with cross-entropy and save it in kdcompress's checkpoint format."""
    _dispatch("teacher train", locals())


@teacher_app.command("inspect")
@teacher_flags
def teacher_inspect(
    teacher: Annotated[Path, typer.Argument(help="Teacher file in any supported format.")],
    provider: Provider = "cpu",
    threads: Threads = None,
    json_: Json = False,
    **teacher_flags: Any,
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


@students_app.command("list")
def students_list(
    input_shape: Annotated[str, typer.Option(
        "--input-shape", help="Input C,H,W the sizes are counted at.")] = "3,32,32",
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes of the head the sizes count.")] = 10,
    json_: Json = False,
) -> None:
    """Every student: family, params and FLOPs at --input-shape, and the input sizes it is meant for."""
    _dispatch("students list", locals())


def main() -> None:
    """The console entry point. After the command, the atexit handlers run and the process ends without
    the interpreter's teardown: unloading torch's libraries is a good part of a warm `select`
    (benchmarks/RESULTS.md, "select_coldstart after the fresh-process confirmation")."""
    try:
        app()
        code: object = 0
    except SystemExit as e:
        code = e.code
    exit_now(code)


if __name__ == "__main__":
    main()
