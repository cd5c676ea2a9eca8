"""torch -> ONNX: the dynamo exporter, one self-contained file, a dynamic batch axis, metadata, checked;
plus the fp16 / int8 variants (variants.py), each checked the same way.

Facts from ENVIRONMENT.md §3: pass input/output names (dynamo otherwise names the output after the last
node), `external_data=False` (dynamo otherwise writes weights to a side file), `verbose=False` (it prints
progress to stdout otherwise), `dynamic_shapes` for the batch (a static batch breaks at batch != example).
Opsets below 18 are refused: the dynamo exporter silently stays at 18 after a failed down-conversion.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import InputError, UsageError
from ..core.progress import SILENT, Reporter
from ..runtime import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    TOLERANCES,
    VARIANTS,
    checked_bytes,
    encode_value,
    onnx_bytes,
    onnx_proto,
    set_metadata,
    simplify_proto,
)
from ..core.runio import atomic_write_bytes
from ..core.spec import InputSpec
from ..core.splits import Split, normalize
from .variants import to_fp16, to_int8

CHECK_BATCHES = (1, 7)  # 1 and an odd size unlike the export example (2): proves the batch axis is dynamic
DEFAULT_CALIB = 64


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    int8: bool = False
    calib: int = DEFAULT_CALIB  # training images used to calibrate INT8 activations
    simplify: bool = False  # run onnxslim on the fp32 graph (the variants inherit it)

    def __post_init__(self) -> None:
        import onnx

        from ..runtime import ort_max_opset

        # only opsets both onnx and this ONNX Runtime know: a file ORT cannot load would fail its own checks
        top = min(onnx.defs.onnx_opset_version(), ort_max_opset())
        if not MIN_OPSET <= self.opset <= top:
            raise UsageError(f"--opset {self.opset} is not supported; choose {MIN_OPSET}..{top} "
                             f"(the dynamo exporter cannot go below {MIN_OPSET}; this ONNX Runtime runs "
                             f"up to opset {ort_max_opset()})")
        if self.calib < 1:
            raise UsageError(f"--calib must be >= 1, got {self.calib}")

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(v for v in VARIANTS if v == "fp32" or getattr(self, v))


@dataclass(frozen=True)
class OnnxArtifact:
    variant: str
    path: Path
    opset: int
    sha256: str
    bytes: int
    metadata: dict[str, str]
    checks: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "onnx": str(self.path), "opset": self.opset, "sha256": self.sha256,
                "bytes": self.bytes, "checks": self.checks}


# ------------------------------------------------------------------------------------------ metadata


# ------------------------------------------------------------------------------------------ fp32


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, *, opset: int = DEFAULT_OPSET,
                metadata: dict[str, Any] | None = None) -> OnnxArtifact:
    data = onnx_bytes(model, spec, opset=opset, metadata=metadata)
    atomic_write_bytes(path, data)
    meta = {k: encode_value(v) for k, v in (metadata or {}).items()}
    return OnnxArtifact("fp32", Path(path), opset, hashlib.sha256(data).hexdigest(), len(data), meta)


# ------------------------------------------------------------------------------------------ variants


def variant_path(fp32_path: Path, variant: str) -> Path:
    """student.onnx -> student.fp16.onnx / student.int8.onnx (fp32 keeps the plain name)."""
    p = Path(fp32_path)
    return p if variant == "fp32" else p.with_name(f"{p.stem}.{variant}{p.suffix}")


def calibration_images(split: Split, spec: InputSpec, n: int, seed: int = 0) -> np.ndarray:
    """`n` images drawn (seeded, without replacement) from a split of any kind, normalised; read through
    the split's own batches, so a streaming split decodes only what it is asked for once."""
    if len(split) == 0:
        raise InputError("no training images to calibrate INT8 with")
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    order = {int(i): k for k, i in enumerate(idx)}
    out = torch.zeros((len(idx), *spec.shape))
    for b in split.batches(512):
        keep = [j for j, i in enumerate(b.index.tolist()) if i in order]
        if keep:
            out[[order[int(b.index[j])] for j in keep]] = b.x[keep].float()
    return normalize(out, spec).numpy().astype(np.float32)


def check_batches(data: bytes, model: nn.Module, probe: np.ndarray, variant: str) -> dict[str, Any]:
    """Run the ONNX bytes in ORT at every CHECK_BATCHES size on `probe` (normalised images) and compare
    with PyTorch. A batch size that fails to run or gives the wrong output shape is an error; so is an
    fp32 file whose outputs differ from PyTorch beyond the fp32 tolerance (a broken export)."""
    from ..runtime import make_session

    sess = make_session(data, "cpu", 1)
    ref = model.float().cpu().eval()(torch.from_numpy(probe)).detach().numpy()
    diffs, per_batch = [], {}
    for b in CHECK_BATCHES:
        x = probe[:b]
        try:
            out = sess.run(None, {INPUT_NAME: x})[0]
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"the exported {variant} model does not run at batch {b}: {first[:300]}") from None
        if out.shape != ref[:b].shape:
            raise InputError(f"the exported {variant} model returns shape {out.shape} at batch {b}, "
                             f"expected {ref[:b].shape}")
        per_batch[b] = out
        diffs.append(float(np.abs(out.astype(np.float32) - ref[:b]).max()))
    consistency = float(np.abs(per_batch[CHECK_BATCHES[0]][0] - per_batch[CHECK_BATCHES[-1]][0]).max())
    scale = max(1.0, float(np.abs(ref).max()))
    tol = TOLERANCES[variant].max_abs_diff_rel * scale
    if variant == "fp32" and max(diffs) > tol:
        raise InputError(f"the exported fp32 model differs from PyTorch by {max(diffs):.3g} "
                         f"(tolerance {tol:.3g}); the export is broken")
    return {"batches": list(CHECK_BATCHES), "max_abs_diff_vs_torch": max(diffs), "tolerance": tol,
            "within_tolerance": max(diffs) <= tol, "batch_consistency_max_abs_diff": consistency}


@dataclass(frozen=True)
class VariantBuild:
    """One exported file, checked, still in memory: what a caller decides to write (or keep) as a whole."""

    variant: str
    path: Path
    opset: int
    data: bytes
    metadata: dict[str, str]
    checks: dict[str, Any]

    def artifact(self) -> OnnxArtifact:
        return OnnxArtifact(self.variant, self.path, self.opset, hashlib.sha256(self.data).hexdigest(),
                            len(self.data), dict(self.metadata), self.checks)

    def write(self) -> OnnxArtifact:
        atomic_write_bytes(self.path, self.data)
        return self.artifact()


def _probe(spec: InputSpec, probe: np.ndarray | None) -> np.ndarray:
    """CHECK_BATCHES' largest number of images: `probe` repeated as needed, or seeded N(0, 1) without one."""
    if probe is None:
        probe = np.random.default_rng(0).standard_normal((max(CHECK_BATCHES), *spec.shape)).astype(np.float32)
    probe = probe[:max(CHECK_BATCHES)]
    if len(probe) < max(CHECK_BATCHES):
        probe = np.concatenate([probe] * (-(-max(CHECK_BATCHES) // len(probe))))[:max(CHECK_BATCHES)]
    return probe


def _variant_proto(base, variant: str, calib: np.ndarray | None):
    """The ModelProto of `variant` made from the fp32 `base` (which stays unchanged)."""
    import onnx

    from .variants import topological_sort

    if variant == "fp32":
        return base
    if variant == "fp16":
        return to_fp16(onnx.load_from_string(base.SerializeToString()))
    with tempfile.TemporaryDirectory(prefix="kdc-export-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(base.SerializeToString())
        to_int8(src, dst, calib, INPUT_NAME)
        proto = onnx.load(str(dst))
    topological_sort(proto)
    # quant_pre_process stamps its own keys; ours describe the file that ships
    keep = [p for p in proto.metadata_props if not p.key.startswith("onnx.")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    return proto


def build_units(opts: ExportOptions) -> int:
    """The units of work build_variants reports: the fp32 export, onnxslim, each other variant made (fp16
    conversion, int8 calibration and quantisation), and every file checked."""
    made = len(opts.variants) - 1  # fp32 is the export itself
    return 1 + int(opts.simplify) + made + len(opts.variants)


def build_variants(model: nn.Module, spec: InputSpec, fp32_path: Path, opts: ExportOptions,
                   metadata: dict[str, Any], *, calib: np.ndarray | None = None,
                   probe: np.ndarray | None = None, report: Reporter = SILENT) -> list[VariantBuild]:
    """The fp32 file and each requested variant, in memory: every one passes onnx.checker (full_check)
    and runs at batch 1 and 7 in ONNX Runtime, compared with PyTorch on `probe` images (default: seeded
    N(0, 1) in the normalised space). Nothing is written. Each step is reported (build_units of them)."""
    if opts.int8 and calib is None:
        raise UsageError("--int8 needs training images to calibrate on: give --data (or export a run)")
    probe = _probe(spec, probe)
    report.step("exporting fp32 to ONNX")
    base = onnx_proto(model, spec, opset=opts.opset)
    report.advance()
    if opts.simplify:
        report.step("simplifying with onnxslim")
        base = simplify_proto(base)
        report.advance()
    out: list[VariantBuild] = []
    for variant in opts.variants:
        meta = {**metadata, "variant": variant, "opset": opts.opset, "simplified": opts.simplify}
        if variant != "fp32":
            report.step(f"making {variant}" + (" (calibrating)" if variant == "int8" else ""))
        proto = _variant_proto(base, variant, calib)
        report.advance(int(variant != "fp32"))
        report.step(f"checking {variant} against PyTorch")
        set_metadata(proto, meta)
        data = checked_bytes(proto, f"the {variant} ONNX model")
        checks = check_batches(data, model, probe, variant)
        report.advance()
        out.append(VariantBuild(variant, variant_path(fp32_path, variant), opts.opset, data,
                                {k: encode_value(v) for k, v in meta.items()}, checks))
    return out


def export_variants(model: nn.Module, spec: InputSpec, fp32_path: Path, opts: ExportOptions,
                    metadata: dict[str, Any], *, calib: np.ndarray | None = None,
                    probe: np.ndarray | None = None) -> list[OnnxArtifact]:
    """build_variants, then every file written beside `fp32_path` (after all of them passed their checks)."""
    return [b.write() for b in build_variants(model, spec, fp32_path, opts, metadata, calib=calib, probe=probe)]
