"""The distill job keys: the rarely used distill options, given as `--set section.key=value` beside the preset
keys (train.*, <term>.*). JOB_KEYS is the one table: each key's distill parameter (the name config.json's
`job.flags` records), type, default, help and the flag it replaced. The old flags stay accepted, hidden from
`--help`, through `job_flags`, which declares them from this table, so the two spellings cannot drift.

Sections are reserved: a `--set` whose section is one of JOB_SECTIONS is a job key, never a preset key."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ..core.config import AUTO_MIN_TRIAL
from ..core.errors import KdError, UsageError

BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}
NONE_WORD = "none"


@dataclass(frozen=True)
class JobKey:
    key: str  # section.name, as given to --set
    param: str  # the distill parameter it sets (and config.json's job.flags records)
    kind: type  # bool, int, float or str
    default: Any
    flag: str  # the flag it replaced, still accepted hidden ("--tune/--no-tune": a flag pair)
    help: str
    choices: tuple[str, ...] = ()  # the accepted words of a str key (empty: any text)
    optional: bool = False  # `none` sets it back to unset (its default None)

    @property
    def main_flag(self) -> str:
        return self.flag.split("/")[0]

    def accepted(self) -> str:
        """What the key takes, for help and error lines."""
        if self.kind is bool:
            words = "true or false (1 or 0)"
        elif self.choices:
            words = " or ".join(self.choices)
        else:
            words = {int: "an integer", float: "a number", str: "text"}[self.kind]
        return f"{words} or none" if self.optional else words

    def parse(self, raw: str) -> Any:
        """The value `--set KEY=raw` gives, strictly by type; a bad one is one line naming the key."""
        text = raw.strip()
        if self.optional and text.lower() == NONE_WORD:
            return None
        value = _convert(self.kind, text)
        if value is None or (self.choices and value not in self.choices):
            raise UsageError(f"--set {self.key}={raw!r} is not valid; {self.key} takes {self.accepted()}")
        return value


def _convert(kind: type, text: str) -> Any:
    """text as `kind`, or None when it is not one (no silent truncation: 1.5 is not an integer)."""
    if kind is bool:
        return BOOL_WORDS.get(text.lower())
    if kind is int:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else None
    if kind is float:
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return text or None


JOB_KEYS: tuple[JobKey, ...] = (
    JobKey("select.rank", "rank", str, "flops", "--rank", "Rank the fitting candidates by flops (the most capable) "
           "or trial (short distillation runs, successive halving).", choices=("flops", "trial")),
    JobKey("select.trial_top", "trial_top", int, 4, "--trial-top",
           "select.rank=trial: at most this many fits (each family's most capable first); >= 2."),
    JobKey("select.trial_budget", "trial_budget", float, 0.25, "--trial-budget", "select.rank=trial: trial time in "
           "all, as a fraction of the main training's (each candidate's epoch timed), in (0, 1]."),
    JobKey("select.tune", "tune", bool, True, "--tune/--no-tune", "Sweep ORT session settings (threads, optimisation "
           "level, execution mode) for the candidates near the choice; the best go into the ONNX metadata."),
    JobKey("select.max_precision_drop", "max_precision_drop", float, 0.01, "--max-precision-drop",
           "Gate for a reduced-precision choice: fp32 student top-1 minus variant top-1 <= X (fraction); "
           "otherwise the run falls back to the best fp32 fit."),
    JobKey("select.threads", "threads", int, None, "--threads", "ORT intra-op threads for latency (default 1).",
           optional=True),
    JobKey("select.stat", "stat", str, "p50", "--stat", "Latency statistic the budget applies to.",
           choices=("p50", "p90", "p99")),
    JobKey("export.fp16", "fp16", bool, False, "--fp16", "Also export a float16 variant (float32 inputs/outputs)."),
    JobKey("export.int8", "int8", bool, False, "--int8", "Also export a static INT8 (QDQ, per-channel) variant."),
    JobKey("export.calib", "calib", int, 64, "--calib", "Training images that calibrate INT8; >= 1."),
    JobKey("export.simplify", "simplify", bool, False, "--simplify", "Simplify the graph with onnxslim."),
    JobKey("gate.min_agreement", "min_agreement", float, None, "--min-agreement",
           "Gate: top-1 agreement with the PyTorch model >= X (fraction).", optional=True),
    JobKey("gate.max_accuracy_drop", "max_accuracy_drop", float, None, "--max-accuracy-drop",
           "Gate: teacher top-1 minus variant top-1 <= X (fraction; 0.01 = 1 point).", optional=True),
    JobKey("auto.presets", "auto_presets", str, None, "--auto-presets", "--preset auto: the presets to rank, "
           "comma-separated (default kd,kd_ls,dist,dkd,nd).", optional=True),
    JobKey("auto.budget", "auto_budget", float, 1.0, "--auto-budget",
           "--preset auto: trial epochs in all, as a fraction of the main training's."),
    JobKey("auto.min_trial", "auto_min_trial", float, AUTO_MIN_TRIAL, "--auto-min-trial",
           "--preset auto: the shortest first trial, as a fraction of the main training's epochs (fewer rounds "
           "rather than shorter trials)."),
    JobKey("student.init", "student_init", str, None, "--student-init", "Initial student weights: a state_dict file "
           "for the chosen student, or pretrained (timm/torchvision students; local caches only unless "
           "data.download=true).", optional=True),
    JobKey("data.download", "download", bool, False, "--download", "Let cifar10/cifar100/mnist/fashionmnist download "
           "into their root, and student.init=pretrained fetch weights."),
    JobKey("runtime.compile", "compile_", bool, False, "--compile",
           "torch.compile the student's training forward (faster steps on a GPU after a compile pause)."),
    JobKey("teacher.allow_weak", "allow_weak_teacher", bool, False, "--allow-weak-teacher",
           "Distil even from a teacher no better than chance on the validation split."),
)
BY_KEY = {k.key: k for k in JOB_KEYS}
JOB_SECTIONS = tuple(dict.fromkeys(k.key.split(".")[0] for k in JOB_KEYS))
# core.config.JOB_SECTIONS, what a preset may not key a term, must hold these (tests/test_setkeys.py checks)


def is_job_key(item: str) -> bool:
    """`--set item` addresses a job key (its section is a job section), not a preset key."""
    return item.partition("=")[0].strip().partition(".")[0] in JOB_SECTIONS


def job_key(item: str) -> tuple[JobKey, Any]:
    """`section.key=value` as (its JobKey, the parsed value); an unknown key names the section's keys."""
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq:
        raise UsageError(f"--set expects key=value, got '{item}'")
    if key not in BY_KEY:
        section = key.partition(".")[0]
        known = [k.key for k in JOB_KEYS if k.key.startswith(section + ".")]
        raise UsageError(f"--set {key}: unknown job key; {section}.* keys are {', '.join(known)} (docs/cli.md)")
    jk = BY_KEY[key]
    return jk, jk.parse(raw)


def split_sets(items: Iterable[str] | None) -> tuple[list[str], dict[str, tuple[JobKey, Any]]]:
    """--set items as (the preset ones, in order; the job ones by parameter, the last given winning)."""
    preset: list[str] = []
    job: dict[str, tuple[JobKey, Any]] = {}
    for item in items or ():
        if is_job_key(item):
            jk, value = job_key(item)
            job[jk.param] = (jk, value)
        else:
            preset.append(item)
    return preset, job


def apply_job_keys(f: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """The distill flags with the `--set` job keys moved into their parameters (so the job, and what
    config.json records, is the same as the old flags gave; `set_` keeps the preset keys only), and the job
    keys given. A job key and its old flag both given on the command line with different values are refused."""
    preset, job = split_sets(f.get("set_"))
    if not job:
        return f, frozenset()
    given = f.get("_given") or frozenset()
    for param, (jk, value) in job.items():
        if param in given and f.get(param) != value:
            raise UsageError(f"--set {jk.key}={_show(value)} disagrees with {jk.main_flag} ({_show(f.get(param))}) "
                             "on the same command line; give one of them")
    values = {p: v for p, (_, v) in job.items()}
    return {**f, **values, "set_": preset or None}, frozenset(jk.key for jk, _ in job.values())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return NONE_WORD if value is None else str(value)


def name_set_keys(error: KdError, keys: Iterable[str]) -> None:
    """An error that names an old flag whose value came from `--set KEY` names `--set KEY` instead."""
    for key in keys:
        jk = BY_KEY[key]
        error.message = re.sub(rf"(?<![\w-]){re.escape(jk.main_flag)}(?![\w-])", f"--set {key}", error.message)


def _hidden_option(jk: JobKey) -> Any:
    kind = jk.kind | None if jk.optional else jk.kind
    return Annotated[kind, typer.Option(jk.flag, hidden=True, help=jk.help)]


def job_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a typer command the old job flags, hidden: one keyword parameter per JOB_KEYS entry, added to
    the signature typer reads before its `**` parameter (which receives them)."""
    sig = inspect.signature(command, eval_str=True)
    params = list(sig.parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        raise TypeError(f"{command.__name__} needs a ** parameter to take the job flags")
    added = [inspect.Parameter(jk.param, inspect.Parameter.KEYWORD_ONLY, default=jk.default,
                               annotation=_hidden_option(jk)) for jk in JOB_KEYS]
    command.__signature__ = sig.replace(parameters=[*params[:-1], *added, params[-1]])  # type: ignore[attr-defined]
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in added}}
    return command
