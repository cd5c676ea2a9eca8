"""The select stage: candidates x InputSpec x Budget -> Selection, measured in ONNX Runtime (cached per
machine fingerprint); the Pareto plot and the table of the ladder."""

from .result import PRECISIONS, Candidate, Selection
from .cache import LatencyCache
from .search import measure_cached, measure_model, plausible, select
from .view import pareto_front, save_pareto_plot

__all__ = ["Candidate", "LatencyCache", "PRECISIONS", "Selection", "measure_cached", "measure_model", "pareto_front", "plausible",
           "save_pareto_plot", "select"]
