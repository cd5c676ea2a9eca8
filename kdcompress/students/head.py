"""The pooled classifier head every zoo family shares (timm's interface): global average pooling, an
optional pre-logits block, the final Linear.

A family subclasses `PooledHead`, builds its trunk, calls `init_head(...)` and defines `forward_features`;
`forward_head(f, pre_logits)`, `get_classifier()` and `forward` come from here. The attribute names (`pool`,
`pre`, `fc`) are those the families always used, so the state_dict keys of existing checkpoints are unchanged
(pooling, dropout and Identity hold no weights)."""

from __future__ import annotations

from torch import Tensor, nn


class PooledHead(nn.Module):
    # (no class-level annotations: torch.jit.script would read them as attribute types)

    def init_head(self, embed_dim: int, num_classes: int, *, pre: nn.Module | None = None,
                  fc: nn.Linear | None = None) -> None:
        self.embed_dim = embed_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre = pre if pre is not None else nn.Identity()
        self.fc = fc if fc is not None else nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:  # each family's trunk
        raise NotImplementedError

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        f = self.pre(self.pool(f).flatten(1))
        return f if pre_logits else self.fc(f)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
