"""Command-line interface. Each command parses flags, builds one config and calls one stage.

torch and friends are imported inside the commands, so `kdcompress --help` answers instantly.
Every KdError becomes one line on stderr and its own exit code; no traceback reaches the user
(set KDCOMPRESS_DEBUG=1 to see one for an unexpected failure).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .core.errors import KdError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distil an image classifier into a small student that meets a measured latency budget.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train or inspect teachers.")
presets_app = typer.Typer(no_args_is_help=True, help="List and show the built-in KD presets.")
app.add_typer(teacher_app, name="teacher")
app.add_typer(presets_app, name="presets")

INTERNAL_ERROR = 70


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kdcompress: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


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
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _fail(f"internal error: {type(e).__name__}: {first} (set KDCOMPRESS_DEBUG=1 for the traceback)",
              INTERNAL_ERROR)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ options

Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (created; rerunning resumes).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a preset value, e.g. kd.T=2, train.lr=0.1.")]
Device = Annotated[str, typer.Option(help="Training device: auto, cpu or cuda.")]
Provider = Annotated[str, typer.Option(help="ONNX Runtime execution provider for latency: cpu, cuda, tensorrt.")]
Threads = Annotated[int | None, typer.Option(help="ORT intra-op threads for latency (default 1).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
TeacherArch = Annotated[str | None, typer.Option("--teacher-arch", help="Architecture of a weights-only teacher: a torchvision model (resnet18) or a zoo name (resnet8x4); torchvision:NAME / zoo:NAME to disambiguate.")]
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


def _preset(name: str, epochs: int | None, overrides: list[str] | None):
    from .losses import load_checked_preset

    sets = list(overrides or [])
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return load_checked_preset(name, sets)


# ------------------------------------------------------------------------------------------ distill


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="Teacher: kdcompress checkpoint, state_dict (+ --teacher-arch), dict checkpoint, TorchScript or .onnx.")],
    data: Annotated[str, typer.Option(help="Dataset spec: digits, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, cifar10:/root, cifar100:/root, mnist:/root, fashionmnist:/root.")],
    budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="Latency budget per image, ms.")] = None,
    preset: Annotated[str, typer.Option(help="Preset name or a .toml path.")] = "kd",
    student: Annotated[str | None, typer.Option(help="Skip selection and use this student.")] = None,
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
    download: Annotated[bool, typer.Option("--download", help="Let cifar10/cifar100/mnist/fashionmnist download into their root.")] = False,
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

    def go():
        from .core.config import Budget, RunConfig, RuntimeConfig, TeacherOptions
        from .core.errors import UsageError

        if budget_ms is None and student is None:
            raise UsageError("give --budget-ms (to select a student) or --student NAME")
        topts = TeacherOptions.from_flags(arch=teacher_arch, num_classes=num_classes, classes=classes,
                                          input_shape=input_shape, mean=mean, std=std)
        cfg = RunConfig(teacher=teacher, data=data, preset=_preset(preset, epochs, set_),
                        budget=Budget(budget_ms, stat), runtime=RuntimeConfig(device, provider, threads, compile_),
                        out=out, student=student, trust_checkpoint=trust_checkpoint, restart=restart,
                        teacher_options=topts, download=download)
        from .export import ExportOptions
        from .pipeline import distill as run_distill
        from .validate import Gates, raise_for_gates

        gates = Gates(min_agreement, max_accuracy_drop, budget_ms, stat)
        opts = ExportOptions(fp16=fp16, int8=int8, calib=calib, simplify=simplify)
        report = run_distill(cfg, _console(), export_opts=opts, gates=gates)
        if not report:  # a torchrun process other than rank 0: rank 0 reports
            return
        if json_:
            _print_json(report)
        else:
            _summary(report)
        raise_for_gates(report)

    run_guarded(go)


def _summary(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"kdcompress {r['preset']['name']}: {r['teacher']['arch']} -> {r['student']['arch']}")
    for col in ("", "arch", "params", "test acc", "p50 ms", "p90 ms", "p99 ms"):
        t.add_column(col, justify="right" if col not in ("", "arch") else "left")
    for role in ("teacher", "student"):
        m = r[role]
        lat = m["latency_ms"]
        t.add_row(role, m["arch"], f"{m['params']:,}", f"{100 * m['accuracy']:.2f}%", f"{lat['p50']:.4f}",
                  f"{lat['p90']:.4f}", f"{lat['p99']:.4f}")
    c = Console()
    c.print(t)
    budget = r["budget_ms"]
    ok = r["student"]["meets_budget"]
    c.print(f"budget {budget if budget is not None else '-'} ms ({r['budget_stat']}): "
            f"{'[green]met[/]' if ok else '[red]missed[/]'}; speed-up {r['speedup']:.2f}x; "
            f"student reaches {100 * r['accuracy_ratio']:.1f}% of the teacher's accuracy; "
            f"parity max|diff| {r['parity']['max_abs_diff']:.2e}, agreement {100 * r['parity']['top1_agreement']:.2f}%")
    for v in r.get("variants", []):
        c.print(f"  {v['name']:5s} {v['onnx']}: top-1 {100 * v['accuracy']:.2f}%, p50 {v['latency_ms']['p50']:.4f} ms, "
                f"gates {'pass' if v['passed'] else '[red]FAIL[/]'}" + (" [bold](recommended)[/]" if v["recommended"] else ""))
    c.print(f"outputs in {r['run_dir']}/: student.onnx, student.pt, report.json, report.md, plots/")


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

    def go():
        from .commands.export import export_job, raise_for_export
        from .export import ExportOptions

        opts = ExportOptions(opset=opset, fp16=fp16, int8=int8, calib=calib, simplify=simplify)
        result = export_job(run=run, checkpoint=checkpoint, out=out, data=data, teacher=teacher, opts=opts,
                            console=_console())
        if json_:
            _print_json(result)
        else:
            for a in result["artifacts"]:
                par = a.get("parity")
                extra = (f"  test acc {100 * a['accuracy']:.2f}%  max|diff| {par['max_abs_diff']:.3g}  "
                         f"agreement {100 * par['top1_agreement']:.2f}%" if par else "")
                typer.echo(f"{a['variant']:5s} {a['onnx']}  {a['bytes']:,} bytes{extra}")
        raise_for_export(result)

    run_guarded(go)


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

    def go():
        from .commands.validate import validate_job
        from .core.build import parse_floats
        from .core.config import RuntimeConfig
        from .core.errors import UsageError
        from .validate import Gates, raise_for_gates

        if throughput_batch < 1:
            raise UsageError(f"--throughput-batch must be >= 1, got {throughput_batch}")
        report = validate_job(files=list(onnx), data=data, teacher=teacher, checkpoint=checkpoint,
                              runtime=RuntimeConfig("cpu", provider, threads),
                              gates=Gates(min_agreement, max_accuracy_drop, budget_ms, stat),
                              mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), layout=layout,
                              throughput_batch=throughput_batch, out=out, console=_console())
        if json_:
            _print_json(report)
        else:
            _validation_table(report)
        raise_for_gates(report)

    run_guarded(go)


def _validation_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"kdcompress validate on {r['data']['name']} ({r['provider']}, {r['threads']} thread(s))")
    for col in ("model", "top-1", "p50 ms", "p90 ms", "p99 ms", "img/s", "max|diff|", "agree", "speed-up", "gates"):
        t.add_column(col, justify="left" if col == "model" else "right")
    rows = ([("teacher", r["teacher"], None)] if r.get("teacher") else []) + [(v["name"], v, v) for v in r["variants"]]
    for name, m, v in rows:
        lat, par = m["latency_ms"], (v or {}).get("parity") or {}
        sp = (v or {}).get("speedup_vs_teacher")
        t.add_row(name + (" *" if v and v["recommended"] else ""), f"{100 * m['accuracy']:.2f}%", f"{lat['p50']:.4f}",
                  f"{lat['p90']:.4f}", f"{lat['p99']:.4f}", f"{m['throughput']['throughput']:,.0f}",
                  f"{par['max_abs_diff']:.3g}" if par else "-", f"{100 * par['top1_agreement']:.2f}%" if par else "-",
                  f"{sp:.2f}x" if sp else "-", "-" if v is None else ("pass" if v["passed"] else "[red]FAIL[/]"))
    c = Console()
    c.print(t)
    c.print(f"recommended: {r['recommended'] or 'none (no variant passed every gate)'}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory (or a validate --out directory) holding report.json.")],
    json_: Json = False,
) -> None:
    """Re-render report.md and the plots from report.json."""

    def go():
        from .report import rerender

        r = rerender(run)
        if json_:
            _print_json(r)
        else:
            root = run if run.is_dir() else run.parent
            typer.echo(f"wrote {root / 'report.md'}" + "".join(f", {root / p}" for p in r.get("plots", [])))

    run_guarded(go)


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

    def go():
        from .commands.select import run_select
        from .core.config import Budget, RuntimeConfig
        from .select import print_table

        names = tuple(n.strip() for n in (candidates or "").split(",") if n.strip())
        sel, title = run_select(teacher=teacher, budget=Budget(budget_ms, stat, batch),
                                runtime=RuntimeConfig(provider=provider, threads=threads), candidates=names,
                                use_cache=not no_cache, out=out, trust_checkpoint=trust_checkpoint,
                                console=_console())
        if json_:
            _print_json(sel.to_json())
        else:
            print_table(sel, title)

    run_guarded(go)


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

    def go():
        from .pipeline import train_teacher

        info = train_teacher(data=data, arch=arch, preset=_preset("ce", epochs, ["train.schedule=cosine", *(set_ or [])]),
                             out=out, device=device, console=_console())
        if json_:
            _print_json(info)
        else:
            typer.echo(f"teacher {arch}: test accuracy {100 * info['test_accuracy']:.2f}% -> {out}")

    run_guarded(go)


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

    def go():
        from .commands.inspect import inspect_teacher
        from .core.config import TeacherOptions

        opts = TeacherOptions.from_flags(arch=teacher_arch, num_classes=num_classes, classes=classes,
                                         input_shape=input_shape, mean=mean, std=std)
        info = inspect_teacher(teacher, options=opts, trust=trust_checkpoint, provider=provider, threads=threads)
        if json_:
            _print_json(info)
            return
        from rich.console import Console
        from rich.table import Table

        spec, lat = info["input_spec"], info["latency_ms"]
        names = info["classes"]
        t = Table(title=f"teacher {info['path']}", show_header=False)
        t.add_column("key")
        t.add_column("value")
        for k, v in (
            ("format", info["format"]), ("arch", info["arch"]), ("params", f"{info['params']:,}"),
            ("FLOPs (batch 1)", "unknown" if info["flops"] is None else f"{info['flops']:,}"),
            ("classes", f"{info['num_classes']}: " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")),
            ("input", f"{'x'.join(map(str, spec['shape']))} NCHW, mean {spec['mean']}, std {spec['std']}"),
            ("features", "logits only" if info["logits_only"] else f"embedding of {info['embed_dim']} ({info['features']})"),
            (f"ORT latency ({info['provider']}, {info['threads']} thr, batch 1)",
             f"p50 {lat['p50']:.4f} ms, p90 {lat['p90']:.4f} ms, p99 {lat['p99']:.4f} ms"),
            ("sha256", info["sha256"]),
        ):
            t.add_row(k, v)
        Console().print(t)

    run_guarded(go)


# ------------------------------------------------------------------------------------------ doctor


@app.command()
def doctor(json_: Json = False) -> None:
    """Versions, GPUs, ONNX Runtime providers (and which really start), faiss, CPU limits, conflicts."""

    def go():
        from .commands.doctor import diagnose, render

        info = diagnose()
        if json_:
            _print_json(info)
        else:
            render(info)

    run_guarded(go)


# ------------------------------------------------------------------------------------------ demo


@app.command()
def demo(
    out: Out = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Student training epochs.")] = 20,
    json_: Json = False,
) -> None:
    """Digits end to end: train (or reuse) a teacher, budget = 1/3 of its latency, distill with kd."""

    def go():
        from .pipeline import run_demo

        report = run_demo(out=out, epochs=epochs, console=_console())
        if json_:
            _print_json(report)
        else:
            _summary(report)

    run_guarded(go)


# ------------------------------------------------------------------------------------------ presets


@presets_app.command("list")
def presets_list(json_: Json = False) -> None:
    """Every built-in preset with its description."""

    def go():
        from .core.config import builtin_preset_names, load_preset

        rows = [load_preset(n) for n in builtin_preset_names()]
        if json_:
            _print_json([{"name": p.name, "description": p.description, "variant": p.variant} for p in rows])
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title="kdcompress presets")
        t.add_column("name")
        t.add_column("terms")
        t.add_column("description")
        for p in rows:
            t.add_row(p.name, " + ".join(x.key for x in p.terms),
                      p.description + (" (kdcompress variant)" if p.variant else ""))
        Console().print(t)

    run_guarded(go)


@presets_app.command("show")
def presets_show(name: str, json_: Json = False) -> None:
    """Terms, weights, warm-up and parameters of a preset (a built-in name or a .toml path)."""

    def go():
        from dataclasses import asdict

        from .core.build import build_dataclass
        from .core.config import load_preset, preset_to_json
        from .losses import LOSSES

        p = load_preset(name)
        if json_:
            _print_json(preset_to_json(p))
            return
        from rich.console import Console
        from rich.table import Table

        c = Console()
        c.print(f"[bold]{p.name}[/]{' (kdcompress variant)' if p.variant else ''}: {p.description}")
        c.print(f"reference: {p.reference}")
        t = Table(title="loss terms")
        for col in ("term", "kind", "weight", "warm-up epochs", "params (defaults filled in)"):
            t.add_column(col)
        for term in p.terms:
            params = asdict(build_dataclass(LOSSES.get(term.kind).Params, term.params, term.key))
            t.add_row(term.key, term.kind, f"{term.weight:g}", str(term.warmup_epochs),
                      ", ".join(f"{k}={v}" for k, v in params.items()) or "-")
        c.print(t)
        tr = Table(title="training defaults")
        tr.add_column("key")
        tr.add_column("value")
        for k, v in asdict(p.train).items():
            tr.add_row(k, str(v))
        c.print(tr)

    run_guarded(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
