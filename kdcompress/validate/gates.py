"""Gates a pipeline can rely on, and the recommended variant.

Every variant (fp32, fp16, int8, or each file given to `validate`) is checked against:
- finite: every output on the test split is a finite number (a model answering NaN or inf is broken,
  whatever its argmax); always applies;
- parity: its ORT logits agree with the PyTorch model within the variant's tolerance (variants.TOLERANCES);
  applies whenever the PyTorch checkpoint is at hand;
- min_agreement: top-1 agreement with the PyTorch model >= X (needs the checkpoint);
- max_accuracy_drop: teacher top-1 - variant top-1 <= X, a fraction (0.01 = one percentage point; needs
  the teacher);
- budget_ms: the variant's latency statistic (p50, p90 or p99; batch 1 by default) <= X ms.
The recommended variant is the fastest one that passes every gate and is not slower than fp32. The run
passes when there is one; a failed run exits with GateError's code (5) after its report is written, and
report.json lists every failed (variant, gate) pair.

Without a max_accuracy_drop gate, a shipped file more than WARN_ACCURACY_DROP below the teacher is not
silently "recommended": distill warns (console, report.md, report.json `warnings`) and names the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import GateError, UsageError
from ..core.spec import STATS

GATE_NAMES = ("finite", "parity", "min_agreement", "max_accuracy_drop", "budget_ms")
WARN_ACCURACY_DROP = 0.05  # 5 points of top-1 below the teacher: worth a warning even when no gate asks


@dataclass(frozen=True)
class Gates:
    min_agreement: float | None = None
    max_accuracy_drop: float | None = None
    budget_ms: float | None = None
    budget_stat: str = "p50"

    def __post_init__(self) -> None:
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must be in [0, 1] (a fraction of test images), got {self.min_agreement}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise UsageError(f"--max-accuracy-drop must be in [0, 1] (0.01 = one point), got {self.max_accuracy_drop}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise UsageError(f"--budget-ms must be > 0, got {self.budget_ms}")
        if self.budget_stat not in STATS:
            raise UsageError(f"--stat must be one of {', '.join(STATS)}, got '{self.budget_stat}'")

    def require(self, *, has_reference: bool, has_teacher: bool) -> None:
        if self.min_agreement is not None and not has_reference:
            raise UsageError("--min-agreement compares with the PyTorch model: give --checkpoint student.pt")
        if self.max_accuracy_drop is not None and not has_teacher:
            raise UsageError("--max-accuracy-drop is measured against the teacher: give --teacher")

    def to_json(self) -> dict[str, Any]:
        return {"min_agreement": self.min_agreement, "max_accuracy_drop": self.max_accuracy_drop,
                "budget_ms": self.budget_ms, "budget_stat": self.budget_stat}


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    value: float
    threshold: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "value": self.value, "threshold": self.threshold,
                "detail": self.detail}


def check_gates(ev, par, teacher, gates: Gates) -> list[GateResult]:
    """GateResults for one variant: `ev` its ModelEval, `par` its Parity or None, `teacher` a ModelEval or None."""
    import numpy as np

    bad = int(np.size(ev.logits) - np.isfinite(ev.logits).sum())
    out = [GateResult("finite", bad == 0, float(bad), 0.0,
                      f"{bad} of {np.size(ev.logits)} outputs on the test split are NaN or infinite")]
    if par is not None:
        ok_diff = par.max_abs_diff <= par.max_abs_diff_limit
        ok_agree = par.top1_agreement >= par.tolerance.min_agreement
        out.append(GateResult(
            "parity", ok_diff and ok_agree, par.max_abs_diff, par.max_abs_diff_limit,
            f"{par.variant} tolerance: max |diff| {par.max_abs_diff:.3g} (limit {par.max_abs_diff_limit:.3g}), "
            f"top-1 agreement {par.top1_agreement:.4f} (min {par.tolerance.min_agreement})"))
    if gates.min_agreement is not None and par is not None:
        out.append(GateResult("min_agreement", par.top1_agreement >= gates.min_agreement, par.top1_agreement,
                              gates.min_agreement,
                              f"top-1 agreement with PyTorch {par.top1_agreement:.4f} vs required "
                              f"{gates.min_agreement}"))
    if gates.max_accuracy_drop is not None and teacher is not None:
        drop = teacher.accuracy.top1 - ev.accuracy.top1
        out.append(GateResult("max_accuracy_drop", drop <= gates.max_accuracy_drop + 1e-12, drop,
                              gates.max_accuracy_drop,
                              f"accuracy drop vs teacher {100 * drop:.2f} points vs allowed "
                              f"{100 * gates.max_accuracy_drop:.2f}"))
    if gates.budget_ms is not None:
        v = ev.latency.stat(gates.budget_stat)
        out.append(GateResult("budget_ms", v <= gates.budget_ms, v, gates.budget_ms,
                              f"{gates.budget_stat} {v:.4f} ms at batch {ev.latency.batch} vs budget "
                              f"{gates.budget_ms:g} ms"))
    return out


def accuracy_drop_warning(what: str, top1: float | None, teacher_top1: float | None, gates: Gates,
                          *, threshold: float = WARN_ACCURACY_DROP) -> str | None:
    """The warning for a file `what` far below its teacher (top-1 fractions), or None. With --max-accuracy-drop
    the gate decides (and fails the run, exit 5), so no warning is added to it."""
    import math

    if gates.max_accuracy_drop is not None or top1 is None or teacher_top1 is None:
        return None
    drop = teacher_top1 - top1
    if not math.isfinite(drop) or drop <= threshold + 1e-12:
        return None
    return (f"{what} scores {100 * drop:.1f} points below the teacher ({100 * top1:.2f}% vs {100 * teacher_top1:.2f}% "
            f"top-1 on the test split); train longer (--epochs) or pick a larger student, and gate it with "
            f"--set gate.max_accuracy_drop={threshold:g} (exit 5 when exceeded)")


def teacher_not_ahead_warning(what: str, top1: float | None, teacher_top1: float | None) -> str | None:
    """The warning for a distilled file `what` that scores at or above its teacher (top-1 fractions on the test
    split), or None: a teacher no better than its student has little to teach, and the same student trained
    without it may do as well (benchmarks/RESULTS.md, issue 26: a plain resnet8 at 98.1% under a 97.6% teacher)."""
    import math

    if top1 is None or teacher_top1 is None or not (math.isfinite(top1) and math.isfinite(teacher_top1)):
        return None
    if top1 < teacher_top1:
        return None
    return (f"{what} scores at or above its teacher ({100 * top1:.2f}% vs {100 * teacher_top1:.2f}% top-1 on the "
            "test split): a teacher no better than its student has little to teach; train the same student with "
            "--preset ce as long before crediting distillation, or distil from a stronger teacher")


def recommend(rows: list[tuple[str, str, float, bool]]) -> str | None:
    """`rows` are (name, variant kind, latency, passed). The fastest passing row, never one slower than the
    fastest fp32 row (reduced precision is only worth its accuracy risk when it buys speed)."""
    ok = [r for r in rows if r[3]]
    fp32 = [r[2] for r in rows if r[1] == "fp32"]
    if fp32:
        ok = [r for r in ok if r[2] <= min(fp32)]
    return min(ok, key=lambda r: r[2])[0] if ok else None


def raise_for_gates(report: dict[str, Any]) -> None:
    """GateError (exit 5) naming the failed gates, when no variant passed every gate. Call it after the
    report is written and printed."""
    g = report["gates"]
    if g["passed"]:
        return
    failed = ", ".join(f"{f['variant']}:{f['gate']}" for f in g["failed"]) or "none recorded"
    where = f"; see {report['run_dir']}/report.json" if report.get("run_dir") else ""
    raise GateError(f"no variant passed every gate (failed: {failed}){where}")
