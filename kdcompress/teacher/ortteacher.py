"""An ONNX teacher run in ONNX Runtime behind nn.Module's forward (logits only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import EnvironmentProblem
from ..core.ortbench import make_session
from ..core.system import cpu_limit


class OrtTeacher(nn.Module):
    """An ONNX teacher behind nn.Module's forward (logits only), so training calls it like any teacher.

    Runs on the CPU provider with all the CPUs this process may use; a CUDA input is run with the CUDA
    provider when it starts here. A model exported with a fixed batch is fed in chunks of that batch."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
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
        arr = x.detach().float().cpu().numpy()
        step = self.fixed_batch or max(len(arr), 1)
        outs = [sess.run([self.output_name], {self.input_name: arr[i:i + step]})[0] for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)

    def __deepcopy__(self, memo):  # an ORT session cannot be copied; a fresh one over the same file is equal
        return OrtTeacher(self.path)
