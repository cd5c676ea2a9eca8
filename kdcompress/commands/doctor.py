"""`kdcompress doctor`: what this machine can actually do, and the known ways an install goes wrong.

Listing is not proof: onnxruntime-gpu lists CUDAExecutionProvider on machines where it cannot load
(ENVIRONMENT.md §2), so every available provider is started on a one-node model and the provider the
session really got is reported. Known conflicts come from the installed distributions' metadata.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import time
import warnings
from importlib import metadata
from typing import Any

from .. import __version__

# Distributions that install the same import package: at most one of each group may be present.
CONFLICTS = (
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-training")),
    ("faiss", ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12")),
)


def installed_distributions() -> dict[str, str]:
    """Normalised distribution name -> version, for everything importlib.metadata can see."""
    out: dict[str, str] = {}
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").strip().lower().replace("_", "-")
        if name:
            out.setdefault(name, d.version)
    return out


def conflict_warnings(dists: dict[str, str]) -> list[str]:
    found = []
    for module, group in CONFLICTS:
        present = [f"{n} {dists[n]}" for n in group if n in dists]
        if len(present) > 1:
            found.append(f"{' and '.join(present)} are all installed: they write the same `{module}` package, "
                            f"so the last one installed wins and uninstalling either breaks the other; keep one "
                            f"(pip uninstall them all, then install the one you want)")
    return found


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def probe_provider(ort, model: bytes, provider: str) -> dict[str, Any]:
    """Start a session asking for `provider` only; it 'starts' when the session really got it and the
    Relu gives the right answer."""
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the fallback error is reported here, in one line
    t0 = time.perf_counter()
    # onnxruntime print()s its fallback notice to stdout, which carries doctor's JSON: keep it out
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _probe(ort, model, provider, so, t0)


def _probe(ort, model: bytes, provider: str, so, t0: float) -> dict[str, Any]:
    import numpy as np

    try:
        sess = ort.InferenceSession(model, sess_options=so, providers=[provider])
        got = sess.get_providers()
        y = sess.run(None, {"x": np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)})[0]
        ok = got[0] == provider and bool(np.array_equal(y, [[0.0, 2.0, 0.0, 4.0]]))
        note = "" if ok else f"fell back to {got[0]}"
    except Exception as e:
        ok, note = False, ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]
    return {"provider": provider, "starts": ok, "seconds": round(time.perf_counter() - t0, 4), "note": note}


def _torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(),
                            "cudnn": _cudnn_version(torch),
                            "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 2),
                                 "capability": f"{p.major}.{p.minor}"})
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def _cudnn_version(torch) -> str | None:
    if not torch.backends.cudnn.is_available():
        return None
    v = torch.backends.cudnn.version()  # cuDNN 9 encodes major*10000 + minor*100 + patch (92400 = 9.24.0)
    return f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v and v >= 10000 else str(v)


def _faiss_info() -> dict[str, Any]:
    try:
        import faiss
    except ImportError as e:
        return {"installed": False, "note": str(e)[:200]}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {"installed": True, "version": getattr(faiss, "__version__", "?"),
            "gpu_build": hasattr(faiss, "StandardGpuResources"), "gpus": int(gpus)}


def diagnose() -> dict[str, Any]:
    import onnxruntime as ort
    import torchvision

    from ..core.system import cpu_limit

    dists = installed_distributions()
    torch_info = _torch_info()
    torch_info["torchvision"] = torchvision.__version__
    model = _tiny_onnx()
    available = ort.get_available_providers()
    probes = [probe_provider(ort, model, p) for p in available]
    problems = conflict_warnings(dists)
    notes = []
    for p in probes:
        if not p["starts"] and p["provider"] != "CPUExecutionProvider":
            problems.append(f"{p['provider']} is listed by onnxruntime but does not start here"
                            + (f" ({p['note']})" if p["note"] else "") + "; --provider for it will fail")
    if torch_info["cuda_build"] and not torch_info["cuda_available"]:
        notes.append(f"torch is a CUDA {torch_info['cuda_build']} build but sees no GPU; training runs on the CPU")
    onnx_dists = {n: v for n, v in dists.items() if n.startswith("onnxruntime")}
    cpus = os.cpu_count() or 1
    limit = cpu_limit()
    return {
        "kdcompress": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "torch": torch_info,
        "onnxruntime": {"version": ort.__version__, "device": ort.get_device(), "distributions": onnx_dists,
                        "available_providers": available, "providers": probes},
        "faiss": _faiss_info(),
        "cpu": {"count": cpus, "usable": limit, "container_limited": limit < cpus},
        "warnings": problems,
        "notes": notes,
    }




def run_doctor(f: dict[str, Any], console):
    from . import Outcome, render

    info = diagnose()
    return Outcome(info, lambda: render.doctor_table(info))
