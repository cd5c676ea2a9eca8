"""Which student ships, decided in one place. `choose` is distill's one call before training: the selection
(select.engine, through selection.measure), `--rank trial` (trials.py), `--preset auto` (autopreset.py) and
the teacher-output cache, returned as one `Decision`. After validation `gate_precision` says whether the
reduced-precision file keeps its accuracy, and, when it does not and another student is the best fp32 fit,
`fallback_prepared` is what that student is chosen and trained with (into RUN/fallback/, by the same phases)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import losses, students
from ..core.config import Preset, RunConfig, preset_to_json
from ..core.progress import eta_bar
from ..core.errors import UsageError
from ..core.runio import RunDir
from ..core.types import NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS
from ..select import Candidate, Selection, apply_precision_gate, export_options_for
from ..train import CacheDecision, CacheFacts, check_resumable, decide_cache
from ..validate import Validation
from .autopreset import choose_preset
from .prepare import Prepared
from .selection import Ladder, measure, setting_for
from .trials import rank_by_trial


@dataclass(frozen=True)
class Decision:
    """The student that trains and how: the Selection (its `chosen` is the student, in its precision, its
    `fallback` the best fp32 fit beside a reduced-precision choice, its stats the trial ranking), the run's
    configuration as it trains (the --preset auto winner and its ranking, the teacher cache decided), the
    export options that make the chosen precision, and the teacher-cache decision for the report."""

    selection: Selection
    cfg: RunConfig
    export: Any  # ExportOptions
    cache: CacheDecision

    @property
    def student(self) -> Candidate:
        return self.selection.chosen

    @property
    def arch(self) -> str:
        return self.selection.chosen.name

    @property
    def precision(self) -> str:
        return self.selection.chosen.precision

    @property
    def fallback(self) -> Candidate | None:
        return self.selection.fallback


def fingerprint(cfg: RunConfig, teacher, arch: str, student_init: str | None) -> dict[str, Any]:
    """What a run's checkpoints must match to be resumed (train.check_resumable)."""
    return {"arch": arch, "data": cfg.data, "teacher": teacher.sha256, "preset": preset_to_json(cfg.preset),
            "teacher_options": cfg.teacher_options.to_json(),
            **({"student_init": student_init} if student_init else {})}


def choose(p: Prepared, run: RunDir, measured: Selection | None = None) -> Decision:
    """Select (before any training, so an impossible budget costs seconds, not an epoch), then rank the pool
    by trials (--rank trial) and the presets by paired trials (--preset auto), then decide the teacher cache.
    `measured`: a selection made already (the precision fallback's), used as it is instead of measuring."""
    cfg, opts = p.cfg, p.options
    selection = measured if measured is not None else _measure(p)
    if selection.chosen is None:
        raise UsageError("nothing was chosen: give --budget-ms (to select a student) or --student NAME")
    if opts.select.rank == "trial" and not cfg.student and cfg.budget.ms is not None:
        # trials train into RUN/trials/: a run directory holding another configuration is refused first
        # (its architecture is the trials' to decide: everything else must match)
        if not cfg.restart:
            fp = fingerprint(cfg, p.teacher, selection.chosen.name, opts.student_init)
            p.ddp.on_main(lambda: check_resumable(run, fp, ignore=("arch",)))
        selection = rank_by_trial(selection, p, run)
    decide, decided = cache_decider(p, selection), {}
    if cfg.auto is not None and cfg.auto.winner is None:  # --preset auto: paired short trials pick the preset
        # each candidate's teacher outputs as its full run would use them, so that the trials train as the
        # winner will (and, with the cache, read one build instead of running the teacher every epoch)
        decided = {c.name: decide(c) for c in cfg.auto.candidates}
        auto = replace(cfg.auto, candidates=tuple(with_cache(c, decided[c.name]) for c in cfg.auto.candidates))
        cfg = choose_preset(replace(cfg, auto=auto), selection.chosen.name,
                            lambda arch: fingerprint(cfg, p.teacher, arch, opts.student_init), p.teacher,
                            p.splits, run, p.device, p.ddp, p.console, opts.student_init)
    cache = decided.get(cfg.preset.name) or decide(cfg.preset)
    cfg = replace(cfg, preset=with_cache(cfg.preset, cache))  # before the fingerprint records it
    return Decision(selection, cfg, export_options_for(opts.export, selection.chosen.precision), cache)


def _measure(p: Prepared) -> Selection:
    ladder = Ladder(p.splits.num_classes, p.teacher.input_spec, p.teacher.model if p.teacher.exportable else None,
                    names=(p.cfg.student,) if p.cfg.student else p.cfg.candidates)
    with eta_bar(p.console, "select") as bar:
        return p.ddp.on_main(lambda: measure(  # measured once, by rank 0
            ladder, p.cfg.budget, p.cfg.runtime, setting_for(p.options.select), report=bar))


def fallback_selection(d: Decision) -> Selection:
    """The first selection with its fp32 fallback as the choice: the fallback was measured there (or read from
    the --latency-table), so it is not measured again; a second draw on this machine could refuse a student
    that fits after the first one has trained."""
    return replace(d.selection, chosen=d.selection.fallback, fallback=None, precision="fp32")


def cache_facts(preset, teacher, student_flops: int | None, teacher_flops: int | None) -> CacheFacts:
    """What train.cachechoice reads of this preset, teacher and student."""
    needs = losses.preset_needs(preset)
    return CacheFacts(teacher_flops=teacher_flops, student_flops=student_flops,
                      reads_teacher=bool(needs & {NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED}),
                      teacher_file=bool(teacher.sha256),
                      embed_dim=teacher.embed_dim if NEED_TEACHER_EMBED in needs else None)


def cache_decider(p: Prepared, selection: Selection) -> Callable[[Preset], CacheDecision]:
    """preset -> train.teacher_cache=auto decided for it, this teacher and student and its run length
    (train.cachechoice); the teacher's FLOPs are counted once for every preset asked about."""
    t_flops = selection.teacher.flops if selection.teacher is not None else (
        students.capacity(p.teacher.model, p.teacher.input_spec).flops if p.teacher.exportable else None)

    def decide(preset: Preset) -> CacheDecision:
        facts = cache_facts(preset, p.teacher, selection.chosen.flops, t_flops)
        return decide_cache(preset.train, facts, p.splits.train, p.splits.num_classes)
    return decide


def with_cache(preset: Preset, decision: CacheDecision) -> Preset:
    """The preset with the decision written into its training settings, so config.json and the resume
    fingerprint record what runs."""
    return replace(preset, train=replace(preset.train, teacher_cache=decision.used))


def gate_precision(d: Decision, val: Validation, p: Prepared) -> tuple[dict[str, Any], Validation, str | None]:
    """(report.json's `precision` object, the validation as it ships, the fp32 student to train instead or
    None). A reduced-precision file that fails its gate is not recommended when the same student ships in
    fp32 (or no fp32 student fits)."""
    precision, fallback = apply_precision_gate(d.selection, val, p.options.select, p.console)
    if precision["fell_back"] and fallback is None:
        fp32_ok = all(g.passed for g in val.variant("fp32").gates)
        val = replace(val, recommended="fp32" if fp32_ok else None)
    return precision, val, fallback


def fallback_prepared(p: Prepared, d: Decision, student: str, run: RunDir) -> Prepared:
    """What the fp32 fallback is chosen and trained with: the run's configuration as it trained (its preset,
    ranked already, and teacher cache), this student alone, in `run` (RUN/fallback/), fp32 only; no
    --student-init (it named the first student's weights). Its selection is fallback_selection's."""
    cfg = replace(d.cfg, student=student, out=run.root, candidates=())
    opts = replace(p.options, export=replace(p.options.export, int8=False, fp16=False), student_init=None,
                   record=None, notes=(),
                   select=replace(p.options.select, precision="fp32", rank="flops"))
    return replace(p, cfg=cfg, options=opts)
