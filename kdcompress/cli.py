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

from .errors import KdError

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


def _preset(name: str, epochs: int | None, overrides: list[str] | None):
    from .config import apply_overrides, load_preset

    sets = list(overrides or [])
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return apply_overrides(load_preset(name), sets)


# ------------------------------------------------------------------------------------------ distill


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (kdcompress format).")],
    data: Annotated[str, typer.Option(help="Dataset spec: digits, synthetic:classes=C,size=S,n=N.")],
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
    trust_checkpoint: Annotated[bool, typer.Option(help="Allow pickled (code-carrying) checkpoints.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard this run directory's checkpoints and start over.")] = False,
    json_: Json = False,
) -> None:
    """The whole job: teacher -> select -> distill -> export -> validate -> report."""

    def go():
        from .config import Budget, RunConfig, RuntimeConfig
        from .errors import UsageError

        if budget_ms is None and student is None:
            raise UsageError("give --budget-ms (to select a student) or --student NAME")
        cfg = RunConfig(teacher=teacher, data=data, preset=_preset(preset, epochs, set_),
                        budget=Budget(budget_ms, stat), runtime=RuntimeConfig(device, provider, threads),
                        out=out, student=student, trust_checkpoint=trust_checkpoint, restart=restart)
        from .pipeline import distill as run_distill

        report = run_distill(cfg, _console())
        if json_:
            _print_json(report)
        else:
            _summary(report)

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
    c.print(f"outputs in {r['run_dir']}/: student.onnx, student.pt, report.json, report.md")


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
        from .config import Budget, RuntimeConfig
        from .selection_view import print_table, run_select

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
        from .config import builtin_preset_names, load_preset

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
                      p.description + (" [kdcompress variant]" if p.variant else ""))
        Console().print(t)

    run_guarded(go)


@presets_app.command("show")
def presets_show(name: str, json_: Json = False) -> None:
    """Terms, weights, warm-up and parameters of a preset (a built-in name or a .toml path)."""

    def go():
        from dataclasses import asdict

        from .config import build_dataclass, load_preset, preset_to_json
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
