"""How a teacher's penultimate embedding is reached, whatever the model is.

Three routes, tried in this order by `find_embedding`; each is accepted only when the logits computed
through it equal the model's own output on a probe batch:

    forward_head     timm's interface (forward_features, forward_head(pre_logits=True), get_classifier):
                     timm models and kdcompress's zoo
    classifier_hook  a forward pre-hook on the classifier Linear captures its input (torchvision models and
                     most plain nn.Modules)
    children         the module's children run in order up to the last Linear, with the flatten (and, where
                     the shapes say so, the global average pooling) torchvision's forward does between them.
                     Forward hooks are refused on ScriptModules (torch 2.14), so this is the route for a
                     scripted torchvision model; a model whose forward does more than run its children
                     fails the logits check and stays logits-only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EMBED_TIMM = "forward_head"
EMBED_HOOK = "classifier_hook"
EMBED_CHILDREN = "children"
_CONTAINERS = ("Sequential",)  # children that only run their own children in order: expanded


def _kind(m: nn.Module) -> str:
    """The class name of a module, also for a scripted one (RecursiveScriptModule keeps original_name)."""
    return getattr(m, "original_name", None) or type(m).__name__


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if _kind(child) in _CONTAINERS:
            out.extend(_leaves(child, full + "."))
        else:
            out.append((full, child))
    return out


def _to_linear(t: Tensor, linear: nn.Module) -> Tensor:
    """What torchvision's forward does before its classifier: flatten, or pool a feature map first."""
    if t.dim() > 2:
        if t.dim() == 4 and t.shape[2] * t.shape[3] > 1 and t.shape[1] == getattr(linear, "in_features", -1):
            t = t.mean((2, 3))
        t = t.flatten(1)
    return t


def last_linear(model: nn.Module) -> str | None:
    """Dotted name of the classifier the children route ends at: the last Linear among the (Sequential-
    expanded) children, looking inside the last child that holds one (nn.Sequential(net, nn.Softmax()))."""
    for name, m in reversed(_leaves(model)):
        if _kind(m) == "Linear":
            return name
        inner = last_linear(m) if any(_kind(c) == "Linear" for c in m.modules()) else None
        if inner:
            return f"{name}.{inner}"
    return None


def _children_forward(model: nn.Module, x: Tensor, head: str) -> tuple[Tensor, Tensor]:
    emb: Tensor | None = None
    t = x
    for name, m in _leaves(model):
        if head.startswith(name + "."):  # the classifier is inside this child: run it the same way
            t, emb = _children_forward(m, t, head[len(name) + 1:])
            continue
        if _kind(m) == "Linear":
            t = _to_linear(t, m)
        if name == head:
            emb = t
        if _kind(m) != "Identity":  # a traced Identity cannot be called on its own ("Trace submodules")
            t = m(t)
    if emb is None:
        raise ValueError(f"no child named {head}")
    return t, emb


def forward_with_embed(model: nn.Module, x: Tensor, via: str, head: str | None) -> tuple[Tensor, Tensor]:
    """(logits, embedding) through the route `find_embedding` accepted."""
    if via == EMBED_TIMM:
        f = model.forward_features(x)
        emb = model.forward_head(f, pre_logits=True)
        logits = model.get_classifier()(emb) if hasattr(model, "get_classifier") else model.forward_head(f)
        return logits, emb.flatten(1)
    if via == EMBED_CHILDREN:
        logits, emb = _children_forward(model, x, head or "")
        return logits, emb.flatten(1)
    # EMBED_HOOK: the embedding is what enters the classifier Linear (torchvision heads, most models)
    captured: list[Tensor] = []
    module = model.get_submodule(head or "")
    handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[-1].flatten(1)


def _same(lg: Tensor, logits: Tensor) -> bool:
    return lg.shape == logits.shape and bool(torch.allclose(lg, logits, atol=1e-5, rtol=1e-4))


def find_embedding(model: nn.Module, x: Tensor, logits: Tensor) -> tuple[str | None, str | None, int | None]:
    """(route, classifier name, embedding width), or (None, None, None) for a logits-only teacher. An
    embedding counts only if the logits computed from it equal the model's own output."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        try:
            with torch.no_grad():
                lg, emb = forward_with_embed(model, x, EMBED_TIMM, None)
            if _same(lg, logits) and emb.dim() == 2:
                return EMBED_TIMM, None, int(emb.shape[1])
        except Exception:  # the methods exist but take other arguments: try the other routes
            pass
    if not isinstance(model, torch.jit.ScriptModule):
        heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == logits.shape[1]]
        for name in reversed(heads):
            try:
                with torch.no_grad():
                    lg, emb = forward_with_embed(model, x, EMBED_HOOK, name)
            except Exception:
                continue
            if _same(lg, logits) and emb.shape[0] == x.shape[0]:
                return EMBED_HOOK, name, int(emb.shape[1])
    head = last_linear(model)
    if head:
        try:
            with torch.no_grad():
                lg, emb = forward_with_embed(model, x, EMBED_CHILDREN, head)
            if _same(lg, logits) and emb.shape[0] == x.shape[0]:
                return EMBED_CHILDREN, head, int(emb.shape[1])
        except Exception:  # the children do not compose into the forward (functional ops between them)
            pass
    return None, None, None
