"""The select stage: candidates x InputSpec x Budget -> Selection, measured in ONNX Runtime (cached per
machine fingerprint); the Pareto plot and the table of the ladder; the trial rankings (students by
successive halving, presets by paired trials); the precision gate after training; the teacher's summary
that lets a warm selection run without torch. Nothing here imports torch at import time (select.warm)."""

from .result import PRECISIONS, Candidate, Selection, SelectOptions
from .cache import LatencyCache
from .ladder import export_ladder
from .precision import apply_precision_gate, export_options_for, selection_kwargs
from .presetrank import DEFAULT_CANDIDATES, PresetRanking, rank_presets, simplest_first
from .search import ladder_rows, measure_cached, measure_model, plausible, select
from .trial import halving_plan, noise_margin, plan_cost, successive_halving, trial_pool
from .view import pareto_front, save_pareto_plot
from .warm import LazyTeacher, TeacherSummary, known_summary, remember, summary_key, summary_of

__all__ = ["DEFAULT_CANDIDATES", "PRECISIONS", "Candidate", "LatencyCache", "LazyTeacher", "PresetRanking",
           "SelectOptions", "Selection", "TeacherSummary", "apply_precision_gate", "export_ladder",
           "export_options_for", "halving_plan", "known_summary", "ladder_rows", "measure_cached", "measure_model",
           "noise_margin", "pareto_front", "plan_cost", "plausible", "rank_presets", "remember", "save_pareto_plot",
           "select", "selection_kwargs", "simplest_first", "successive_halving", "summary_key", "summary_of",
           "trial_pool"]
