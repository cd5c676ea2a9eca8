"""An ONNX teacher run in ONNX Runtime behind nn.Module's forward (logits only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import EnvironmentProblem, InputError
from ..core.fsguard import file_sha256
from ..runtime import make_session
from ..core.system import cpu_limit


INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def graph_layout(dims: list[int | None], recorded: str | None = None) -> str:
    """NCHW or NHWC for a rank-4 image input: the file's `layout` metadata when it has one, else the rule
    validate uses (validate.models.describe): NHWC when the last axis is 1 or 3 channels and the second
    is a known size that is not."""
    if recorded and recorded.upper() in ("NCHW", "NHWC"):
        return recorded.upper()
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] is not None and dims[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


class OrtTeacher(nn.Module):
    """An ONNX teacher behind nn.Module's forward (logits only), so training calls it like any teacher.

    Runs on the CPU provider with all the CPUs this process may use; a CUDA input is run with the CUDA
    provider when it starts here. A model exported with a fixed batch is fed in chunks of that batch.
    `layout` is the graph input's: "NHWC" graphs get the (N, C, H, W) batch transposed to (N, H, W, C)."""

    def __init__(self, path: Path, layout: str = "NCHW", output: str | None = None):
        super().__init__()
        self.path = Path(path)
        self.layout = layout
        self._sessions: dict[str, Any] = {}
        sess = self._session("cpu")
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        if inp.type not in INPUT_TYPES:
            raise InputError(f"ONNX teacher {path} takes {inp.type.removeprefix('tensor(').rstrip(')')} input "
                             f"'{inp.name}'; kdcompress feeds normalised float images (float, float16 or double): "
                             "export it with a floating-point image input")
        self.input_dtype = INPUT_TYPES[inp.type]  # a float16 graph (keep_io_types=False) is fed float16
        self.output_name = output or sess.get_outputs()[0].name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def _session(self, kind: str):
        if kind not in self._sessions:
            if kind == "cuda":
                try:
                    self._sessions[kind] = make_session(self.path, "cuda")
                except EnvironmentProblem:
                    self._sessions[kind] = self._session("cpu")
            else:
                self._sessions[kind] = make_session(self.path, "cpu", cpu_limit())
        return self._sessions[kind]

    def _feed(self, x: Tensor) -> np.ndarray:
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.detach().float().cpu().numpy()).astype(self.input_dtype, copy=False)

    def forward(self, x: Tensor) -> Tensor:
        sess = self._session("cuda" if x.is_cuda else "cpu")
        arr = self._feed(x)
        step = self.fixed_batch or max(len(arr), 1)
        outs = [sess.run([self.output_name], {self.input_name: arr[i:i + step]})[0] for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs).astype(np.float32, copy=False)).to(x.device)

    def output_shapes(self, x: Tensor) -> dict[str, tuple[int, ...]]:
        """Every graph output's shape for the batch `x` (to tell logits from features in a graph with several)."""
        sess = self._session("cpu")
        arr = self._feed(x[: self.fixed_batch] if self.fixed_batch else x)
        if self.fixed_batch and len(arr) < self.fixed_batch:
            arr = np.concatenate([arr] * -(-self.fixed_batch // len(arr)))[: self.fixed_batch]
        names = [o.name for o in sess.get_outputs()]
        return {n: tuple(np.shape(v)) for n, v in zip(names, sess.run(names, {self.input_name: arr}), strict=True)}

    def extra_repr(self) -> str:
        """The file's content and layout: repr(model) keys select's latency cache, and two ONNX teachers of one
        input shape are different graphs (the default repr, "OrtTeacher()", would share one entry)."""
        if not hasattr(self, "_sha256"):
            self._sha256 = file_sha256(self.path)
        return f"sha256={self._sha256}, layout={self.layout}, output={self.output_name}"

    def __deepcopy__(self, memo):  # an ORT session cannot be copied; a fresh one over the same file is equal
        return OrtTeacher(self.path, self.layout, self.output_name)
