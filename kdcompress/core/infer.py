"""PyTorch inference over a split: the one evaluation loop (validation accuracy during training, sharded
over torchrun ranks; test accuracy; parity references)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .spec import InputSpec
from .splits import Split, normalize


@torch.inference_mode()
def forward_split(model: nn.Module, split: Split, spec: InputSpec, device: torch.device, batch_size: int = 256,
                  *, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """(index, fp32 logits, labels) of this rank's shard of `split` (all of it when world=1), on the CPU,
    model in eval mode (channels_last inputs on CUDA); restores the model's train/eval mode. With world > 1
    the shards are padded to equal length, so an index may appear twice."""
    was_training = model.training
    model.eval()
    idx, outs, ys = [], [], []
    try:
        for b in split.batches(batch_size, rank=rank, world=world):
            x = normalize(b.x.to(device, non_blocking=True), spec)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float().cpu())
            idx.append(b.index.cpu())
            ys.append(b.y.cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros(0, dtype=torch.int64), torch.empty(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(idx), torch.cat(outs), torch.cat(ys)


def predict(model: nn.Module, split: Split, spec: InputSpec, device: torch.device, batch_size: int = 256) -> Tensor:
    """fp32 logits (N, C) on the CPU in the split's order, model in eval mode."""
    return forward_split(model, split, spec, device, batch_size)[1]


def shard_hits(model: nn.Module, split: Split, spec: InputSpec, device: torch.device, batch_size: int = 256,
               *, rank: int = 0, world: int = 1) -> Tensor:
    """(N,) float64: 1 where this rank's shard classified sample n correctly. A sample seen twice (padding)
    is set, not added, so the element-wise max over ranks, summed, counts each sample once."""
    hit = torch.zeros(len(split), dtype=torch.float64)
    index, logits, y = forward_split(model, split, spec, device, batch_size, rank=rank, world=world)
    if len(index):
        hit[index] = (logits.argmax(1) == y).double()
    return hit


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")
