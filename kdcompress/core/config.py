"""Frozen configuration dataclasses, preset loading (stdlib tomllib) and `--set key=value` overrides.

A preset is data: a TOML file with a list of `[[loss]]` terms and `[train]` defaults. Nothing in a preset
is imported or evaluated; every key is checked against the dataclasses below or the loss's own Params.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .build import build_dataclass, coerce, parse_floats, parse_value
from .errors import InputError, UsageError
from .registry import did_you_mean
from .spec import STATS, InputSpec

# --------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule. Step milestones are given for `milestone_epochs` and scale with --epochs."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: tuple[int, ...] = (150, 180, 210)
    milestone_epochs: int = 240
    gamma: float = 0.1
    augment: str = "auto"  # auto | none | shift | crop_flip
    # Mixing on top of the augmentation (train/augment.py): each image blended with a partner image, the same
    # mixed image for teacher and student; labels are not mixed, so only label-free presets take it (fm).
    mix: str = "none"  # none | mixup | cutmix
    seed: int = 0
    num_workers: int = 0
    tensorboard: bool = False  # also log each epoch's row to RUN/tensorboard/ (needs the tensorboard package)
    # Teacher-output cache (train/teacher_cache.py): off = the teacher runs in every step; views = its outputs on
    # `cache_views` seeded augmented views per sample are computed once and reused; auto (the default) = views
    # where it pays (train.cachechoice.decide_cache: a teacher >= 2x the student's FLOPs, a run long enough).
    teacher_cache: str = "auto"  # auto | off | views
    cache_views: int = 8
    cache_topk: int = 0  # logits kept per view; 0 = all when C <= 100, else 20 (the rest as in FKD)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0"),
            (math.isfinite(self.momentum) and 0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (math.isfinite(self.gamma) and self.gamma > 0, "gamma", "must be a finite number > 0"),
            (0 <= self.seed < 2**32, "seed", "must be in [0, 2**32)"),
            (self.optimizer in ("sgd", "adamw"), "optimizer", "must be 'sgd' or 'adamw'"),
            (self.schedule in ("cosine", "step", "constant"), "schedule", "must be cosine, step or constant"),
            (self.augment in ("auto", "none", "shift", "crop_flip"), "augment",
             "must be auto, none, shift or crop_flip"),
            (self.mix in ("none", "mixup", "cutmix"), "mix", "must be none, mixup or cutmix"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             "must be a finite number >= 0"),
            (self.milestone_epochs >= 1, "milestone_epochs", "must be >= 1"),
            (self.num_workers >= 0, "num_workers", "must be >= 0"),
            (self.teacher_cache in ("auto", "off", "views"), "teacher_cache", "must be 'auto', 'off' or 'views'"),
            (1 <= self.cache_views <= 256, "cache_views", "must be in [1, 256]"),
            (self.cache_topk >= 0, "cache_topk", "must be >= 0 (0 = automatic)"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise UsageError(f"train.{name}={getattr(self, name)!r} {msg}")

    def scaled_milestones(self) -> list[int]:
        """Milestones rescaled from the recipe's length to this run's, e.g. 150/240 of 30 epochs -> 19."""
        scale = self.epochs / self.milestone_epochs
        return sorted({max(1, round(m * scale)) for m in self.milestones})

    def scaled_warmup(self, recipe_epochs: int) -> int:
        """A warm-up given for the recipe's length, rescaled like the milestones: 20 of 240 epochs -> 3 in a
        40-epoch run, 20 in a 240-epoch run; at least 1 when the recipe has one, 0 stays 0."""
        if recipe_epochs <= 0:
            return 0
        return max(1, round(recipe_epochs * self.epochs / self.milestone_epochs))


# --------------------------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the objective: `weight * omega(epoch) * loss(kind, params)`."""

    kind: str
    weight: float = 1.0
    warmup_epochs: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    # The warm-up as a preset file gives it, for the recipe's length (train.milestone_epochs); warmup_epochs is
    # then that value rescaled to train.epochs (scale_warmups). None: warmup_epochs is absolute, as given by
    # `--set <term>.warmup_epochs=N` or by code that builds terms directly.
    recipe_warmup: int | None = None

    @property
    def key(self) -> str:
        return self.name or self.kind

    def warmup_json(self, train: TrainConfig) -> dict[str, Any]:
        """The effective warm-up of this term and where it came from (report.json's training section)."""
        scaled = self.recipe_warmup is not None
        return {"term": self.key, "epochs": self.warmup_epochs,
                "recipe_epochs": self.recipe_warmup, "recipe_length": train.milestone_epochs if scaled else None,
                "source": "recipe, scaled to the run" if scaled else "absolute (set explicitly)"}


def scale_warmups(terms: tuple[LossTerm, ...], train: TrainConfig) -> tuple[LossTerm, ...]:
    """Each term's effective warm-up for this run: recipe warm-ups rescaled to train.epochs like the LR
    milestones; absolute ones (recipe_warmup None) kept."""
    return tuple(t if t.recipe_warmup is None else replace(t, warmup_epochs=train.scaled_warmup(t.recipe_warmup))
                 for t in terms)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    reference: str
    terms: tuple[LossTerm, ...]
    train: TrainConfig
    variant: bool = False  # True: not the paper's confirmed form ("kdcompress variant")
    source: str = ""

    @property
    def needs_teacher(self) -> bool:
        return any(t.kind != "ce" for t in self.terms)


# --------------------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Budget:
    ms: float | None
    stat: str = "p50"  # one of core.spec.STATS
    batch: int = 1

    def __post_init__(self) -> None:
        if self.ms is not None and not (math.isfinite(self.ms) and self.ms > 0):
            raise UsageError(f"--budget-ms must be a finite number > 0, got {self.ms}")
        if self.stat not in STATS:
            raise UsageError(f"--stat must be one of {', '.join(STATS)}, got '{self.stat}'")
        if self.batch < 1:
            raise UsageError(f"--batch must be >= 1, got {self.batch}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how to run: the device for training, the ORT provider and threads for measurement."""

    device: str = "auto"  # auto | cpu | cuda
    provider: str = "cpu"  # cpu | cuda | tensorrt
    threads: int | None = None  # ORT intra-op threads; None = 1 (latency of small models, see ortbench)
    compile: bool = False  # torch.compile the student's training forward (trainstep.py)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be auto, cpu or cuda, got '{self.device}'")
        if self.provider not in ("cpu", "cuda", "tensorrt"):
            raise UsageError(f"unknown --provider '{self.provider}'"
                             f"{did_you_mean(self.provider, ['cpu', 'cuda', 'tensorrt'])}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")


def read_class_names(value: str) -> tuple[str, ...]:
    """--classes: `a,b,c`, or a text file with one name per line (UTF-8, a byte-order mark stripped, as
    Windows editors write one). A name listed twice in a file is the file's fault (InputError, with the
    lines); twice on the command line, the flag's (UsageError, from TeacherOptions)."""
    p = Path(value)
    if not p.is_file():
        return tuple(n.strip() for n in value.split(",") if n.strip())
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--classes file {p} cannot be read as UTF-8 text: {e}") from None
    names = [(i, n.strip()) for i, n in enumerate(lines, start=1) if n.strip()]
    first: dict[str, int] = {}
    for i, n in names:
        if n in first:
            raise InputError(f"--classes file {p} names '{n}' twice (lines {first[n]} and {i}); each output "
                             "needs its own name")
        first[n] = i
    return tuple(n for _, n in names)


@dataclass(frozen=True)
class TeacherOptions:
    """What the teacher flags say (--teacher-arch, --num-classes, --classes, --input-shape, --mean, --std).

    Each value, when given, overrides what the checkpoint records; a format that records nothing (a plain
    state_dict, TorchScript, ONNX without metadata) needs them, and the loader names the missing flag.
    """

    arch: str | None = None
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 2:
            raise UsageError(f"--num-classes must be >= 2, got {self.num_classes}")
        if self.classes is not None:
            if len(self.classes) < 2:
                raise UsageError(f"--classes needs at least 2 names, got {len(self.classes)}")
            if len(set(self.classes)) != len(self.classes):
                dup = next(c for c in self.classes if self.classes.count(c) > 1)
                raise UsageError(f"--classes names '{dup}' twice")
            if self.num_classes is not None and self.num_classes != len(self.classes):
                raise UsageError(f"--num-classes {self.num_classes} disagrees with the {len(self.classes)} "
                                 "names given by --classes")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise UsageError(f"--input-shape must be C,H,W with positive sizes, got {self.input_shape}")
        if self.input_shape is not None:
            InputSpec(self.input_shape, (0.0,) * self.input_shape[0], (1.0,) * self.input_shape[0])  # size limits
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UsageError(f"--std values must be > 0, got {','.join(map(str, self.std))}")

    @classmethod
    def from_flags(cls, *, arch: str | None = None, num_classes: int | None = None, classes: str | None = None,
                   input_shape: str | None = None, mean: str | None = None,
                   std: str | None = None) -> TeacherOptions:
        """Parse the CLI strings: `--classes cat,dog` (or a text file, one name per line),
        `--input-shape 3,224,224` (or 3x224x224), `--mean 0.485,0.456,0.406`."""
        names = read_class_names(classes) if classes is not None else None
        shape = None
        if input_shape is not None:
            parts = input_shape.replace("x", ",").split(",")
            try:
                shape = tuple(int(v) for v in parts)
            except ValueError:
                raise UsageError(f"--input-shape must be C,H,W integers, got '{input_shape}'") from None
        return cls(arch=arch, num_classes=num_classes, classes=names, input_shape=shape,  # type: ignore[arg-type]
                   mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"))

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# `--preset auto`'s shortest first trial, as a fraction of the main run's epochs: 2-epoch trials of 40 ranked the
# presets wrongly on Fashion-MNIST, 8-epoch ones did not (benchmarks/RESULTS.md, "Issue 26, stop 34")
AUTO_MIN_TRIAL = 0.2


@dataclass(frozen=True)
class AutoPreset:
    """`--preset auto`: candidate presets (--epochs, train.* --set applied; simplest first), the trials' budget
    and the shortest first trial, each as a fraction of the main training's epochs; once ranked
    (select/presetrank.py) the winner, its ranking."""

    candidates: tuple[Preset, ...]
    budget: float = 1.0
    min_trial: float = AUTO_MIN_TRIAL
    winner: str | None = None
    ranking: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise UsageError(f"--auto-budget must be a finite number > 0, got {self.budget}")
        if not (math.isfinite(self.min_trial) and 0 <= self.min_trial <= 1):
            raise UsageError(f"auto.min_trial must be a fraction from 0 to 1 of the main training's epochs, "
                             f"got {self.min_trial}")

    def to_json(self) -> dict[str, Any]:
        return {"requested": "auto", "candidates": [p.name for p in self.candidates], "budget": self.budget,
                "min_trial": self.min_trial, "winner": self.winner}


@dataclass(frozen=True)
class RunConfig:
    teacher: Path
    data: str
    preset: Preset
    budget: Budget
    runtime: RuntimeConfig
    out: Path
    student: str | None = None
    candidates: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    restart: bool = False
    teacher_options: TeacherOptions = field(default_factory=TeacherOptions)
    download: bool = False  # let torchvision datasets (cifar10:, mnist:, ...) download into their root
    auto: AutoPreset | None = None  # --preset auto; `preset` is then the winner once auto.winner is set

    def to_json(self) -> dict[str, Any]:
        return {
            "teacher": str(self.teacher),
            "teacher_options": self.teacher_options.to_json(),
            "data": self.data,
            "preset": preset_to_json(self.preset),
            **({"auto_preset": self.auto.to_json()} if self.auto is not None else {}),
            "budget": dataclasses.asdict(self.budget),
            "runtime": dataclasses.asdict(self.runtime),
            "out": str(self.out),
            "student": self.student,
            "candidates": list(self.candidates),
        }


def preset_to_json(p: Preset) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    d["terms"] = [dataclasses.asdict(t) for t in p.terms]
    d["train"]["milestones"] = list(p.train.milestones)
    return d


# --------------------------------------------------------------------------------------------- loading


def builtin_preset_names() -> list[str]:
    files = resources.files("kdcompress.presets")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def is_preset_path(name_or_path: str) -> bool:
    """A user preset is recognised by its spelling alone (it ends in .toml or holds a path separator), never by
    what the working directory holds: a file or folder named `kd` there must not shadow the built-in `kd`."""
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return name_or_path.endswith(".toml") or any(s in name_or_path for s in seps)


def load_preset(name_or_path: str) -> Preset:
    """A built-in name (`kd`, `dkd`, ...), which always wins, or a path to the user's own TOML file
    (`./kd.toml`, `/x/kd`: see is_preset_path)."""
    path = Path(name_or_path)
    if is_preset_path(name_or_path):
        if not path.is_file():
            raise InputError(f"preset file not found: {path}")
        text, source = path.read_text(), str(path)
    else:
        names = builtin_preset_names()
        if name_or_path not in names:
            local = f"; for the file here give ./{name_or_path}" if path.exists() else ""
            raise UsageError(
                f"unknown preset '{name_or_path}'{did_you_mean(name_or_path, names)}; "
                f"choose from: {', '.join(names)}, or give a .toml path{local}"
            )
        text = resources.files("kdcompress.presets").joinpath(f"{name_or_path}.toml").read_text()
        source = f"builtin:{name_or_path}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"preset {source} is not valid TOML: {e}") from None
    return preset_from_dict(raw, default_name=path.stem, source=source)


_PRESET_KEYS = {"name", "description", "reference", "variant", "train", "loss"}
_TERM_KEYS = {"kind", "weight", "warmup_epochs", "params", "name"}


def check_term(term: LossTerm, where: str = "") -> None:
    """A weight is finite and >= 0, a warm-up >= 0: a negative weight would train the student away
    from the teacher, and a NaN one would poison every step."""
    if not (math.isfinite(term.weight) and term.weight >= 0):
        raise UsageError(f"{where}{term.key}.weight={term.weight!r} must be a finite number >= 0")
    if term.warmup_epochs < 0:
        raise UsageError(f"{where}{term.key}.warmup_epochs={term.warmup_epochs} must be >= 0")


# `--set SECTION.key=value` with one of these sections is a distill job key (commands/jobkeys.py), never a
# preset's: a loss term keyed so could not be overridden, so a preset may not name a term so (nor `train`)
JOB_SECTIONS = ("select", "export", "gate", "auto", "student", "data", "runtime", "teacher")


def preset_from_dict(raw: dict[str, Any], default_name: str = "custom", source: str = "") -> Preset:
    where = source or default_name
    unknown = set(raw) - _PRESET_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise UsageError(f"preset {where}: unknown key '{k}'{did_you_mean(k, sorted(_PRESET_KEYS))}")
    losses = raw.get("loss")
    if not isinstance(losses, list) or not losses:
        raise UsageError(f"preset {where}: needs at least one [[loss]] table")
    terms = []
    for i, t in enumerate(losses):
        if not isinstance(t, dict) or "kind" not in t:
            raise UsageError(f"preset {where}: [[loss]] #{i + 1} needs a 'kind'")
        bad = set(t) - _TERM_KEYS
        if bad:
            k = sorted(bad)[0]
            raise UsageError(f"preset {where}: [[loss]] '{t['kind']}' has unknown key "
                             f"'{k}'{did_you_mean(k, sorted(_TERM_KEYS))}")
        warmup = coerce(int, t.get("warmup_epochs", 0), f"{t['kind']}.warmup_epochs")
        term = LossTerm(
            kind=str(t["kind"]),
            weight=coerce(float, t.get("weight", 1.0), f"{t['kind']}.weight"),
            warmup_epochs=warmup,
            params=dict(t.get("params", {})),
            name=str(t.get("name", "")),
            recipe_warmup=warmup if warmup > 0 else None,
        )
        check_term(term, where=f"preset {where}: ")
        terms.append(term)
    keys = [t.key for t in terms]
    taken = next((k for k in keys if k in (*JOB_SECTIONS, "train")), None)
    if taken is not None:
        raise UsageError(f"preset {where}: a loss term may not be keyed '{taken}' (`--set {taken}.*` addresses "
                         f"{'the training config' if taken == 'train' else 'a distill job key'}); give it another "
                         "`name`")
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise UsageError(f"preset {where}: term '{sorted(dup)[0]}' appears twice; give one a distinct `name`")
    train = build_dataclass(TrainConfig, raw.get("train", {}), prefix="train")
    preset = Preset(
        name=str(raw.get("name", default_name)),
        description=str(raw.get("description", "")),
        reference=str(raw.get("reference", "")),
        terms=scale_warmups(tuple(terms), train),
        train=train,
        variant=bool(raw.get("variant", False)),
        source=source,
    )
    return preset


def apply_overrides(preset: Preset, overrides: list[str] | tuple[str, ...]) -> Preset:
    """`--set train.lr=0.1`, `--set kd.T=2`, `--set kd.weight=0.5`, `--set dkd.warmup_epochs=5`.

    Warm-ups from the preset file scale with train.epochs (20 of 240 -> 3 in a 40-epoch run); one given
    with `--set <term>.warmup_epochs=N` is absolute and kept at N whatever the run's length."""
    train_updates: dict[str, Any] = {}
    terms = {t.key: t for t in preset.terms}
    order = [t.key for t in preset.terms]
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got '{item}'")
        key, _, raw_value = item.partition("=")
        key = key.strip()
        value = parse_value(raw_value.strip())
        head, dot, tail = key.partition(".")
        if not dot or not tail:
            raise UsageError(f"--set key '{key}' must look like train.lr or <term>.<param>")
        if head == "train":
            train_updates[tail] = value
            continue
        if head not in terms:
            choices = ["train", *order]
            raise UsageError(f"--set {key}: no term '{head}' in preset '{preset.name}'{did_you_mean(head, choices)}; "
                             f"terms: {', '.join(order)}")
        t = terms[head]
        if tail == "weight":
            t = replace(t, weight=coerce(float, value, key))
        elif tail == "warmup_epochs":  # explicit: absolute epochs, not rescaled with --epochs
            t = replace(t, warmup_epochs=coerce(int, value, key), recipe_warmup=None)
        else:
            t = replace(t, params={**t.params, tail: value})
        check_term(t, where="--set ")
        terms[head] = t
    train = preset.train
    if train_updates:
        current = {f.name: getattr(train, f.name) for f in fields(TrainConfig)}
        for k in train_updates:
            if k not in current:
                raise UsageError(f"unknown key 'train.{k}'{did_you_mean(k, list(current))}; "
                                 f"train has: {', '.join(current)}")
        train = build_dataclass(TrainConfig, {**current, **train_updates}, prefix="train")
    out = replace(preset, terms=scale_warmups(tuple(terms[k] for k in order), train), train=train)
    return out
