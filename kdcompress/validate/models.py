"""Validation in ONNX Runtime of any ONNX image classifier: what it eats (from kdcompress metadata, flags
or the graph), accuracy on the test split (top-1, top-5, per class), parity with the PyTorch model,
latency at batch 1 and throughput at a larger batch through the one harness (ortbench), the teacher
measured the same way, and the gates (gates.py) over every variant."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.classes import is_index_names, match_classes
from ..core.config import RuntimeConfig
from ..core.errors import InputError, UsageError
from ..core.progress import SILENT, Reporter
from ..runtime import TOLERANCES, VARIANTS, Tolerance, detect_variant, logits_output
from ..runtime import LatencyStats, check_onnx, make_session, measure_latency, stored_settings
from ..core.spec import InputSpec, number_list
from ..core.splits import Split, normalize
from ..core.system import cap_threads
from .gates import GateResult, Gates, check_gates, recommend

EVAL_BATCH = 256
THROUGHPUT_BATCH = 32
LATENCY_RUNS = 2  # evaluate_model's two timings: at the budget batch, and throughput
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ModelInput:
    """How to feed one ONNX classifier: images in [0, 1] -> normalised, laid out and typed for it."""

    name: str
    layout: str  # NCHW | NHWC
    spec: InputSpec  # (C, H, W) and the normalisation the file expects
    dtype: str  # the graph input's ORT type string
    static_batch: int | None  # a fixed batch size baked into the graph, else None
    classes: tuple[str, ...] | None  # from metadata
    variant: str
    metadata: dict[str, str]
    columns: tuple[int, ...] | None = None  # output index of each data class (by name); None: same order
    output: str | None = None  # the graph output holding the logits, when it has several; None: its only one

    def outputs(self) -> list[str] | None:
        """What session.run is asked for: the logits output, or None (every output; the only one)."""
        return None if self.output is None else [self.output]

    def feed(self, x01: torch.Tensor) -> np.ndarray:
        x = normalize(x01.float(), self.spec)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy()).astype(_NP_TYPES.get(self.dtype, np.float32))

    def batch_shape(self, b: int) -> tuple[int, ...]:
        c, h, w = self.spec.shape
        return (b, h, w, c) if self.layout == "NHWC" else (b, c, h, w)


def map_classes(mi: ModelInput, data_classes: tuple[str, ...], what: str, warn=None) -> ModelInput:
    """The model's outputs mapped onto the data's classes by NAME (core.classes.match_classes), from the
    class names in its metadata (the same names in another order are reordered; any data class the file
    lacks is an error); a file that names none is taken in the data's order, and `warn` is told so when
    the data's classes have real names. One-line InputError when the names cannot be matched."""
    if mi.classes is None:
        if warn and not is_index_names(data_classes):
            warn(f"{what} records no class names; assuming its output i is the data's class i "
                 f"({', '.join(data_classes[:4])}{' ...' if len(data_classes) > 4 else ''})")
        return mi
    try:
        # names a file records are names, also "0".."K-1": matched strictly, never assumed positional
        cols, note = match_classes(tuple(mi.classes), tuple(data_classes), what, positional_ok=False,
                                   fix="validate it on data whose classes carry its names")
    except ValueError as e:
        raise InputError(str(e)) from None
    if note and warn:
        warn(note)
    return replace(mi, columns=None if cols is None else tuple(cols))


def _json_list(meta: dict[str, str], key: str) -> list | None:
    try:
        v = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        return None
    return v if isinstance(v, list) else None


def _meta_numbers(meta: dict[str, str], key: str, path: Path) -> tuple[float, ...] | None:
    """A mean/std the file's metadata records (None: it records none); a malformed one ("0.5" as a JSON
    string, "[a,b]") is refused naming the field and the file, not taken as absent."""
    if key not in meta:
        return None
    try:
        return number_list(json.loads(meta[key]), f"its metadata '{key}'")
    except json.JSONDecodeError:
        raise InputError(f"{path}: its metadata '{key}' is {meta[key][:60]!r}, not JSON; re-export the file "
                         f"or give --{key}") from None
    except ValueError as e:
        raise InputError(f"{path}: {e}; re-export the file or give --{key}") from None


def _floats(values: tuple[float, ...] | None, channels: int, flag: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise UsageError(f"{flag} needs 1 or {channels} values for a {channels}-channel model, got {len(values)}")
    return tuple(values)


def _meta_floats(meta: dict[str, str], key: str, channels: int, path: Path) -> tuple[float, ...] | None:
    values = _meta_numbers(meta, key, path)
    if values is not None and len(values) not in (1, channels):
        raise InputError(f"{path}: its metadata '{key}' has {len(values)} values for a {channels}-channel input; "
                         f"re-export the file or give --{key}")
    return _floats(values, channels, f"metadata {key}")


def _graph_input(path: Path, layout: str | None):
    """(proto, metadata, the graph's image input, its dims, layout, its (C, H, W) dims: None where symbolic)."""
    import onnx

    check_onnx(path)
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"{path} has {len(inputs)} graph inputs; an image classifier takes exactly one")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"{path} takes a rank-{len(dims)} input '{inp.name}'; expected an image batch (rank 4)")
    layout = (layout or meta.get("layout") or "").upper() or None
    if layout is None:  # infer: a 1- or 3-channel axis beside two equal spatial sizes
        layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) and dims[1] is not None else "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"--layout must be NCHW or NHWC, got '{layout}'")
    chw = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    return proto, meta, inp, dims, layout, chw


def input_shape(path: Path, layout: str | None = None) -> tuple[int | None, int | None, int | None]:
    """The (C, H, W) an ONNX classifier takes, per dimension from its graph, else its input_shape metadata;
    None where neither says (a symbolic size)."""
    _, meta, _, _, _, chw = _graph_input(path, layout)
    meta_shape = _json_list(meta, "input_shape")

    def dim(i: int) -> int | None:
        v = chw[i] or (meta_shape[i] if meta_shape and len(meta_shape) == 3 else None)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 else None
    return dim(0), dim(1), dim(2)


def describe(path: Path, *, data_shape: tuple[int, int, int] | None = None, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None, layout: str | None = None,
             num_classes: int | None = None) -> ModelInput:
    """Read an ONNX classifier's input contract. Flags win over kdcompress metadata; the graph supplies
    shape and layout where neither says; a file with no normalisation anywhere needs --mean/--std. A graph
    with several outputs is read at its logits (graph_logits), told by the class count of its metadata,
    else `num_classes` (the data's)."""
    proto, meta, inp, dims, layout, chw = _graph_input(path, layout)
    meta_shape = _json_list(meta, "input_shape")
    fallback = tuple(meta_shape) if meta_shape and len(meta_shape) == 3 else data_shape
    shape = tuple(int(g) if g else (int(fallback[i]) if fallback else 0) for i, g in enumerate(chw))
    if min(shape) < 1:
        raise InputError(f"{path}: input '{inp.name}' has symbolic image dimensions {dims} and no input_shape "
                         "metadata; validate it with --data so the shape comes from the images")
    if data_shape is not None and tuple(data_shape) != shape:
        raise InputError(f"{path} expects images of {shape} (C, H, W) but the data has {tuple(data_shape)}")
    c = shape[0]
    # flags win: a file's metadata is read (and can be refused) only where no flag gives the value
    m = _floats(mean, c, "--mean") or _meta_floats(meta, "mean", c, path)
    s = _floats(std, c, "--std") or _meta_floats(meta, "std", c, path)
    if m is None or s is None:
        raise UsageError(f"{path} carries no normalisation (mean/std) metadata; give --mean and --std "
                         "(--mean 0 --std 1 feeds images in [0, 1] unchanged)")
    classes = _json_list(meta, "classes")
    variant = meta.get("variant") if meta.get("variant") in VARIANTS else detect_variant(proto)
    elem = {1: "tensor(float)", 10: "tensor(float16)", 11: "tensor(double)"}.get(inp.type.tensor_type.elem_type)
    if elem is None:
        raise InputError(f"{path}: input '{inp.name}' has element type {inp.type.tensor_type.elem_type}; "
                         "expected float, float16 or double")
    try:
        spec = InputSpec(shape, m, s)
    except InputError as e:  # NaN/inf/zero std from the file's metadata: name the file
        raise InputError(f"{path}: {e.message}") from None
    names = tuple(str(x) for x in classes) if classes else None
    output = graph_logits(path, proto, len(names) if names else num_classes)
    return ModelInput(inp.name, layout, spec, elem, dims[0], names, variant, meta, output=output)


def graph_logits(path: Path, proto, count: int | None) -> str | None:
    """The output of a graph with several (logits + features, say) that holds the logits (runtime.logits_output
    on the graph's static shapes, told by the class count of its metadata or the data); None for a graph with
    one output. Else a one-line refusal listing the outputs (reading the first, as before, scored features
    as if they were logits)."""
    outs = list(proto.graph.output)
    if len(outs) == 1:
        return None

    def dims(o) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in o.type.tensor_type.shape.dim]
    shapes = {o.name: dims(o) for o in outs}
    found = logits_output(shapes, count)
    if found is not None:
        return found
    listed = ", ".join(f"'{n}' {s}" for n, s in shapes.items())
    wanted = f"(batch, {count})" if count is not None else "one rank-2 (batch, classes)"
    raise InputError(f"{path} has {len(outs)} outputs ({listed}) and not {wanted} among them to read as the "
                     "logits; export the logits with a static class dimension, or as the only output")


# ------------------------------------------------------------------------------------------ metrics


CONFUSION_MAX_CLASSES = 100  # above it report.json keeps only the most frequent confusions, not the C x C matrix
TOP_CONFUSIONS = 10


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float | None  # only where there are at least 10 classes
    per_class: dict[str, float | None]  # None for a class absent from the split
    confusion: np.ndarray | None = None  # (C, C) counts: rows the true class, columns the predicted one

    def to_json(self) -> dict[str, Any]:
        out = {"accuracy": round(self.top1, 6), "accuracy_top5": None if self.top5 is None else round(self.top5, 6),
               "per_class_accuracy": {k: None if v is None else round(v, 6) for k, v in self.per_class.items()}}
        if self.confusion is not None:
            out["confusion"] = confusion_json(self.confusion, tuple(self.per_class))
        return out


def confusion_json(m: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """The matrix (rows: true class, columns: predicted; up to CONFUSION_MAX_CLASSES classes) and the most
    frequent off-diagonal cells, by class name."""
    off = m.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:TOP_CONFUSIONS]
    top = [{"true": classes[i], "predicted": classes[j], "count": int(off[i, j])}
           for i, j in zip(*np.unravel_index(order, off.shape), strict=True) if off[i, j] > 0]
    matrix = m.astype(int).tolist() if len(classes) <= CONFUSION_MAX_CLASSES else None
    return {"matrix": matrix, "top": top}


def accuracy_metrics(logits: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> Accuracy:
    if len(y) == 0:
        raise InputError("the test split is empty; nothing to validate on")
    top1 = float((logits.argmax(1) == y).mean())
    top5 = None
    if len(classes) >= 10:
        best5 = np.argpartition(-logits, 4, axis=1)[:, :5]
        top5 = float((best5 == y[:, None]).any(1).mean())
    pred = logits.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per = {name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
           for i, name in enumerate(classes)}
    return Accuracy(top1, top5, per, confusion)


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime logits vs the PyTorch fp32 model on the same images, within the variant's tolerance."""

    max_abs_diff: float
    top1_agreement: float
    samples: int
    variant: str
    tolerance: Tolerance
    max_abs_diff_limit: float  # tolerance.max_abs_diff_rel * max(1, max |PyTorch logit|)
    outputs: str = "logits"  # or "probabilities": the file ends in a softmax

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.max_abs_diff_limit and self.top1_agreement >= self.tolerance.min_agreement

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement, "samples": self.samples,
                "variant": self.variant, "tolerance": self.tolerance.to_json(),
                "max_abs_diff_limit": self.max_abs_diff_limit, "outputs": self.outputs, "passed": self.passed}


def _is_probabilities(a: np.ndarray) -> bool:
    return bool(len(a)) and bool((a >= -1e-6).all()) and bool(np.allclose(a.sum(1), 1.0, atol=1e-3))


def parity(onnx_logits_: np.ndarray, reference: np.ndarray, variant: str) -> Parity:
    """A file that ends in a softmax (many third-party classifiers do) is compared with the softmax of
    the PyTorch logits, so the max-abs bound speaks about the same quantity."""
    if onnx_logits_.shape != reference.shape:
        raise InputError(f"ONNX logits {onnx_logits_.shape} and PyTorch logits {reference.shape} differ in shape")
    outputs = "logits"
    if _is_probabilities(onnx_logits_) and not _is_probabilities(reference):
        reference = torch.softmax(torch.from_numpy(reference).double(), dim=1).float().numpy()
        outputs = "probabilities"
    tol = TOLERANCES.get(variant, TOLERANCES["fp32"])
    with np.errstate(invalid="ignore"):
        d = np.abs(onnx_logits_.astype(np.float32) - reference)
    diff = float(np.nan_to_num(d, nan=np.inf).max()) if d.size else 0.0  # a NaN never passes parity
    agree = float((onnx_logits_.argmax(1) == reference.argmax(1)).mean())
    limit = tol.max_abs_diff_rel * max(1.0, float(np.abs(reference).max()))
    return Parity(diff, agree, len(reference), variant, tol, limit, outputs)


def reference_logits(model: torch.nn.Module, split: Split, spec: InputSpec) -> np.ndarray:
    from ..core.infer import predict

    return predict(model.float().cpu(), split, spec, torch.device("cpu")).numpy()


# ------------------------------------------------------------------------------------------ one model


def accuracy_units(static_batch: int | None, images: int) -> int:
    """onnx_logits' units of work (one a batch) for a model of that fixed batch (None: dynamic)."""
    return -(-images // (static_batch or EVAL_BATCH))


def eval_units(mi: ModelInput, images: int) -> int:
    """evaluate_model's units of work: a batch of the test split each, and each latency run."""
    return accuracy_units(mi.static_batch, images) + LATENCY_RUNS


def onnx_logits(session, mi: ModelInput, split: Split, advance: Callable[[], None] | None = None) -> np.ndarray:
    """Logits of every image of a split (any kind: read through `batches`), in split order; a graph with a
    fixed batch is fed in chunks of it, zero-padded. `advance` is called after each batch."""
    step = mi.static_batch or EVAL_BATCH
    outs = []
    for b in split.batches(step):
        feed = mi.feed(b.x)
        n = len(feed)
        if mi.static_batch and n < step:
            feed = np.concatenate([feed, np.zeros((step - n, *feed.shape[1:]), feed.dtype)])
        out = np.asarray(session.run(mi.outputs(), {mi.name: feed})[0])
        if out.ndim != 2:
            raise InputError(f"the model returns an output of shape {out.shape}; expected (batch, classes)")
        out = out[:n]
        if mi.columns is not None:  # the model's own class order -> the data's (by name)
            if out.shape[1] <= max(mi.columns):
                raise InputError(f"the model returns {out.shape[1]} outputs but its metadata names "
                                 f"{len(mi.classes or ())} classes")
            out = out[:, list(mi.columns)]
        outs.append(out.astype(np.float32))
        if advance is not None:
            advance()
    return np.concatenate(outs)


@dataclass(frozen=True)
class ModelEval:
    label: str
    source: str
    sha256: str
    bytes: int
    input: ModelInput
    accuracy: Accuracy
    latency: LatencyStats  # at the budget batch (1 by default): p50/p90/p99
    throughput: LatencyStats  # at a larger batch: images per second
    logits: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.source, "sha256": self.sha256, "bytes": self.bytes, "variant": self.input.variant,
                **self.accuracy.to_json(), "latency_ms": self.latency.to_json(),
                "throughput": self.throughput.to_json()}


def evaluate_model(label: str, source: Path | bytes, mi: ModelInput, split: Split, classes: tuple[str, ...],
                   runtime: RuntimeConfig, *, batch: int = 1, throughput_batch: int = THROUGHPUT_BATCH,
                   report: Reporter = SILENT) -> ModelEval:
    """Accuracy, latency and throughput of one ONNX model (a file, or bytes such as a teacher exported in
    memory) in ONNX Runtime with `runtime`'s provider and threads; without --threads, with the ORT settings
    the file's metadata records (`ort_settings`, written by distill from what select measured). Reports
    eval_units(mi, len(split)) units of work."""
    data = Path(source).read_bytes() if isinstance(source, Path) else source
    settings = stored_settings(data) if runtime.threads is None else None
    sess = make_session(source, runtime.provider, runtime.threads, settings)
    logits = onnx_logits(sess, mi, split, report.advance)
    if logits.shape[1] != len(classes):
        raise InputError(f"{label} predicts {logits.shape[1]} classes but the data has {len(classes)}")
    acc = accuracy_metrics(logits, split.y.numpy(), classes)
    b1 = mi.static_batch or batch
    tb = mi.static_batch or throughput_batch
    lat = measure_latency(sess, mi.batch_shape(b1))
    report.advance()
    # the big batch costs batch x more per run: fewer iterations, same minimum time
    thr = measure_latency(sess, mi.batch_shape(tb), warmup=3, min_iters=10)
    report.advance()
    return ModelEval(label, str(source) if isinstance(source, Path) else "<memory>",
                     hashlib.sha256(data).hexdigest(), len(data), mi, acc, lat, thr, logits)


# ------------------------------------------------------------------------------------------ many models


@dataclass(frozen=True)
class VariantResult:
    name: str
    eval: ModelEval
    parity: Parity | None
    gates: tuple[GateResult, ...]
    speedup: float | None  # teacher p50 / this p50
    accuracy_delta: float | None  # this top-1 - the teacher's top-1

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_json(self, recommended: str | None) -> dict[str, Any]:
        return {"name": self.name, **self.eval.to_json(),
                "parity": self.parity.to_json() if self.parity else None,
                "speedup_vs_teacher": self.speedup, "accuracy_delta_vs_teacher": self.accuracy_delta,
                "gates": [g.to_json() for g in self.gates], "passed": self.passed,
                "recommended": self.name == recommended}


@dataclass(frozen=True)
class Validation:
    variants: tuple[VariantResult, ...]
    teacher: ModelEval | None
    gates: Gates
    recommended: str | None
    provider: str
    threads: int

    @property
    def passed(self) -> bool:
        return self.recommended is not None

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def gates_json(self) -> dict[str, Any]:
        failed = [{"variant": v.name, **g.to_json()} for v in self.variants for g in v.gates if not g.passed]
        return {"thresholds": self.gates.to_json(), "passed": self.passed, "failed": failed}

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "threads": self.threads,
                "variants": [v.to_json(self.recommended) for v in self.variants],
                "recommended": self.recommended, "gates": self.gates_json()}


def effective_threads(runtime: RuntimeConfig, warn=None) -> RuntimeConfig:
    """`runtime` with its ORT threads capped by core.system.cap_threads (a warning when capped); an unset
    --threads stays None (= 1 at session creation)."""
    if runtime.threads is None:
        return runtime
    threads, note = cap_threads(runtime.threads)
    if note and warn:
        warn(note)
    return replace(runtime, threads=threads)


def _names(inputs: list[ModelInput], files: list[Path]) -> list[str]:
    variants = [mi.variant for mi in inputs]
    return [v if variants.count(v) == 1 else f"{v}:{f.name}" for v, f in zip(variants, files, strict=True)]


def validate_models(files: list[Path], inputs: list[ModelInput], split: Split, classes: tuple[str, ...],
                    runtime: RuntimeConfig, gates: Gates, *, reference: np.ndarray | None = None,
                    teacher: tuple[Path | bytes, ModelInput] | None = None, batch: int = 1,
                    throughput_batch: int = THROUGHPUT_BATCH, report: Reporter = SILENT) -> Validation:
    """Measure every file (and the teacher) identically, compare with the PyTorch `reference` logits when
    given, apply the gates and pick the recommended variant. The work (eval_units of every model) is
    planned on `report` first, then reported as it is done."""
    gates.require(has_reference=reference is not None, has_teacher=teacher is not None)
    models = list(inputs) + ([teacher[1]] if teacher is not None else [])
    report.plan(sum(eval_units(mi, len(split)) for mi in models))
    t_eval = None
    if teacher is not None:
        report.step("measuring the teacher")
        t_eval = evaluate_model("teacher", teacher[0], teacher[1], split, classes, runtime, batch=batch,
                                throughput_batch=throughput_batch, report=report)
    rows = []
    for name, path, mi in zip(_names(inputs, files), files, inputs, strict=True):
        report.step(f"measuring {name}")
        ev = evaluate_model(name, path, mi, split, classes, runtime, batch=batch, throughput_batch=throughput_batch,
                            report=report)
        par = parity(ev.logits, reference, mi.variant) if reference is not None else None
        speedup = t_eval.latency.p50 / ev.latency.p50 if t_eval else None
        delta = ev.accuracy.top1 - t_eval.accuracy.top1 if t_eval else None
        rows.append(VariantResult(name, ev, par, tuple(check_gates(ev, par, t_eval, gates)), speedup, delta))
    rec = recommend([(r.name, r.eval.input.variant, r.eval.latency.stat(gates.budget_stat), r.passed) for r in rows])
    return Validation(tuple(rows), t_eval, gates, rec, runtime.provider, runtime.threads or 1)
