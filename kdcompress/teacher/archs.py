"""Architectures a weights-only teacher names (--teacher-arch), and fitting its weights to one.

    NAME / zoo:NAME           a kdcompress zoo model (it adapts to any channel count)
    NAME / torchvision:NAME   a torchvision classification model, weights=None (nothing is downloaded)
    timm:NAME (or NAME)       a timm model, pretrained=False (nothing is downloaded); takes any in_chans

A bare name is tried in every library that has it, in that order. The weights' key prefixes that training
code adds (DDP's `module.`, torch.compile's `_orig_mod.`, a Lightning module's `model.` or any attribute
that holds the network) are stripped until the keys fit. Without --num-classes the class count is read
from the classifier weight (the last Linear-shaped weight/bias pair in the file) and confirmed by loading.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from torch import Tensor, nn

from ..core.errors import InputError, UsageError
from ..core.registry import did_you_mean
from ..core.spec import InputSpec

KNOWN_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile: always stripped


def library_of(label: str) -> str:
    """'torchvision:resnet18' -> "torchvision's resnet18"; a zoo name -> "the kdcompress zoo's NAME"."""
    side, _, bare = label.rpartition(":")
    return f"{side}'s {bare}" if side else f"the kdcompress zoo's {bare}"


def is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _is_timm(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def build_arch(name: str, num_classes: int, spec: InputSpec) -> list[tuple[str, nn.Module]]:
    """Candidate models for an architecture name: the kdcompress zoo, torchvision, then timm (none
    downloads weights). `torchvision:NAME`, `timm:NAME` or `zoo:NAME` picks one library."""
    import torchvision

    from ..students import STUDENTS

    side, _, bare = name.rpartition(":")
    if side not in ("", "zoo", "kdcompress", "torchvision", "timm"):
        raise UsageError(f"unknown library '{side}' in --teacher-arch {name}; use zoo:, torchvision: or timm:")
    tv_names = torchvision.models.list_models(module=torchvision.models)
    zoo_names = list(STUDENTS.names())
    out: list[tuple[str, nn.Module]] = []
    if side in ("", "zoo", "kdcompress") and bare in zoo_names:
        out.append((bare, STUDENTS.get(bare).build(num_classes, spec)))
    if side in ("", "torchvision") and bare in tv_names:
        if spec.shape[0] != 3:
            if not out:
                raise UsageError(f"torchvision's {bare} takes 3-channel images but the input shape has "
                                 f"{spec.shape[0]} channel(s); give --input-shape 3,H,W")
        else:
            try:
                model = torchvision.models.get_model(bare, weights=None, num_classes=num_classes)
            except (TypeError, ValueError) as e:
                raise UsageError(f"torchvision cannot build {bare}: {e}") from None
            out.append((f"torchvision:{bare}", model))
    if side in ("", "timm") and (side == "timm" or not out) and _is_timm(bare):
        import timm

        try:
            model = timm.create_model(bare, pretrained=False, num_classes=num_classes, in_chans=spec.shape[0])
        except Exception as e:  # timm raises many kinds for arguments a model does not take
            raise UsageError(f"timm cannot build {bare}: {' '.join(str(e).split())[:200]}") from None
        out.append((f"timm:{bare}", model))
    if not out:
        pool = zoo_names + tv_names
        if side == "timm":
            import timm

            pool = list(timm.list_models())
        raise UsageError(f"unknown --teacher-arch '{name}'{did_you_mean(bare, pool)}; give a torchvision "
                         "classification model, timm:NAME (a timm model) or a kdcompress zoo name")
    return out


# --------------------------------------------------------------------------------- fitting weights


def key_variants(state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The state_dict as given (DDP/compile prefixes stripped), then with the leading attribute of most of
    its keys removed ('model.' of a Lightning module, 'net.', 'backbone.', ...), keeping only those keys."""
    for prefix in KNOWN_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    out = [state]
    firsts = Counter(k.split(".", 1)[0] for k in state if "." in k)
    for first, n in firsts.most_common(3):
        if n >= max(2, len(state) // 2):
            p = first + "."
            out.extend(key_variants({k[len(p):]: v for k, v in state.items() if k.startswith(p)}))
    return out


def classifier_width(state: dict[str, Tensor]) -> int | None:
    """Rows of the last Linear-shaped (weight 2-D, bias 1-D of the same length) pair: the class count."""
    for key in reversed(list(state)):
        if key.endswith("weight") and state[key].dim() == 2:
            bias = state.get(key[: -len("weight")] + "bias")
            if bias is not None and bias.dim() == 1 and len(bias) == state[key].shape[0]:
                return int(state[key].shape[0])
    return None


def fit_weights(path: Path, arch: str, state: dict[str, Tensor], num_classes: int | None,
                spec: InputSpec) -> tuple[str, nn.Module, int]:
    """(label, model with the weights loaded, class count), or a one-line error naming the model built and
    what does not fit."""
    variants = key_variants(state)
    count = num_classes or next((w for w in map(classifier_width, variants) if w), None)
    if count is None:
        raise UsageError(f"teacher {path} does not record its classes; give --num-classes N or --classes a,b,...")
    built = build_arch(arch, count, spec)
    for label, model in built:
        for st in variants:
            try:
                model.load_state_dict(st, strict=True)
            except RuntimeError:
                continue
            return label, model, count
    raise InputError(_explain(path, built, variants, count, inferred=num_classes is None))


def _explain(path: Path, built: list[tuple[str, nn.Module]], variants: list[dict[str, Tensor]], count: int,
             inferred: bool) -> str:
    """Name the candidate whose parameter names best match the file, and its first misfit."""
    best = None
    for label, model in built:
        mine = model.state_dict()
        for st in variants:
            score = len(set(mine) & set(st))
            if best is None or score > best[0]:
                best = (score, label, mine, st)
    _, label, mine, st = best  # type: ignore[misc]
    who = library_of(label)
    shapes = [k for k in mine if k in st and tuple(mine[k].shape) != tuple(st[k].shape)]
    missing = [k for k in mine if k not in st]
    extra = [k for k in st if k not in mine]
    head = f"teacher {path}: the weights do not fit {who} with {count} classes"
    if shapes:
        k = shapes[0]
        msg = f"{head}: {k} is {tuple(st[k].shape)} in the file but {tuple(mine[k].shape)} in the model"
        width = classifier_width(st)
        if width and width != count and len(shapes) <= 2:
            return msg + f"; the file's classifier has {width} classes: give --num-classes {width}"
        return msg + "; check --teacher-arch (another variant of the model?)"
    return (f"{head}: {len(missing)} of its weights are missing from the file"
            + (f" (e.g. {missing[0]})" if missing else "") + f" and {len(extra)} in the file are not in it"
            + (f" (e.g. {extra[0]})" if extra else "") + "; check --teacher-arch")
