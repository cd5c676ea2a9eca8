"""An ONNX teacher run in ONNX Runtime behind nn.Module's forward (logits only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import EnvironmentProblem
from ..core.fsguard import file_sha256
from ..core.ortbench import make_session
from ..core.system import cpu_limit


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

    def __init__(self, path: Path, layout: str = "NCHW"):
        super().__init__()
        self.path = Path(path)
        self.layout = layout
        self._sessions: dict[str, Any] = {}
        sess = self._session("cpu")
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = sess.get_outputs()[0].name
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

    def forward(self, x: Tensor) -> Tensor:
        sess = self._session("cuda" if x.is_cuda else "cpu")
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        step = self.fixed_batch or max(len(arr), 1)
        outs = [sess.run([self.output_name], {self.input_name: arr[i:i + step]})[0] for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)

    def extra_repr(self) -> str:
        """The file's content and layout: repr(model) keys select's latency cache, and two ONNX teachers of one
        input shape are different graphs (the default repr, "OrtTeacher()", would share one entry)."""
        if not hasattr(self, "_sha256"):
            self._sha256 = file_sha256(self.path)
        return f"sha256={self._sha256}, layout={self.layout}"

    def __deepcopy__(self, memo):  # an ORT session cannot be copied; a fresh one over the same file is equal
        return OrtTeacher(self.path, self.layout)
