"""PyTorch inference over a split (validation accuracy during training, parity references)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .spec import InputSpec
from .splits import Split, normalize


@torch.inference_mode()
def predict(model: nn.Module, split: Split, spec: InputSpec, device: torch.device,
            batch_size: int = 256) -> Tensor:
    """fp32 logits (N, C) on the CPU, model in eval mode; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    for b in split.batches(batch_size):
        outs.append(model(normalize(b.x.to(device), spec)).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")
