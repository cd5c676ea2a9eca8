"""Initialising a student before distillation (`distill --set student.init=...`).

    student.init=PATH          a state_dict for the chosen student (a plain state_dict, a dict with it under
                               state_dict/model/model_state_dict, a kdcompress checkpoint, or .safetensors),
                               loaded weights-only and strictly: any misfit is one line naming the student
    student.init=pretrained    the published ImageNet weights of a timm or torchvision student, read from the
                               local caches only (Hugging Face hub cache, torch hub's checkpoints/); a miss
                               fails in one line saying where it looked. data.download=true fetches them instead.
                               The classifier (and a stem conv for another channel count) keeps its fresh init.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.errors import EnvironmentProblem, InputError, UsageError
from ..core.runio import safe_torch_load
from ..core.spec import InputSpec
from .registry import STUDENTS

PRETRAINED = "pretrained"
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")


def initialise(model: nn.Module, name: str, init: str | None, spec: InputSpec, num_classes: int, *,
               download: bool = False) -> nn.Module:
    """The student `model` (built by the zoo) with its initial weights from `init`; may return a new module."""
    if init is None:
        return model
    if init == PRETRAINED:
        return _pretrained(model, name, spec, num_classes, download)
    state = _read_state(Path(init))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"student.init {init} does not fit student {name}: {_misfit(model, state)}") from None
    return model


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise InputError(f"student.init {path}: file not found (give a state_dict file or 'pretrained')")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        obj = safe_torch_load(path)
    if isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        obj = next((obj[k] for k in WEIGHT_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"student.init {path} holds no state_dict")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _misfit(model: nn.Module, state: dict[str, Tensor]) -> str:
    mine = model.state_dict()
    for k, v in mine.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            return f"{k} is {tuple(state[k].shape)} in the file but {tuple(v.shape)} in the student"
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    return (f"{len(missing)} of its weights are missing from the file" + (f" (e.g. {missing[0]})" if missing else "")
            + f", {len(extra)} in the file are not in it" + (f" (e.g. {extra[0]})" if extra else "")
            + "; is it another architecture's state_dict?")


def _load_matching(model: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """Pretrained weights into `model`, leaving out what differs in shape (the classifier, a new stem)."""
    mine = model.state_dict()
    keep = {k: v for k, v in state.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    if len(keep) < len(mine) // 2:
        raise InputError(f"the pretrained weights found for student {name} do not fit it "
                         f"({len(keep)} of {len(mine)} tensors match)")
    model.load_state_dict(keep, strict=False)


def _cached_file(hf_repo: str | None, url: str | None) -> tuple[Path | None, list[str]]:
    looked: list[str] = []
    if hf_repo:
        from huggingface_hub import constants, try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hf_repo, fname, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(hit, str):
                return Path(hit), looked
        looked.append(f"{constants.HF_HUB_CACHE} (Hugging Face: {hf_repo})")
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if p.is_file():
            return p, looked
        looked.append(str(p))
    return None, looked


def _fetch(name: str, hf_repo: str | None, url: str | None, download: bool) -> dict[str, Tensor]:
    path, looked = _cached_file(hf_repo, url)
    if path is None and download:
        try:
            if hf_repo:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(hf_repo, "model.safetensors"))
            elif url:
                return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EnvironmentProblem(f"could not download the pretrained weights of student {name}: "
                                     f"{' '.join(str(e).split())[:160]}") from None
    if path is None:
        raise EnvironmentProblem(f"no pretrained weights of student {name} in the local caches (looked in "
                                 f"{'; '.join(looked)}); add --set data.download=true to fetch them, or give "
                                 "--set student.init=PATH")
    return _read_state(path)


def _pretrained(model: nn.Module, name: str, spec: InputSpec, num_classes: int, download: bool) -> nn.Module:
    from .timm_zoo import timm_name
    from .torchvision_zoo import TorchvisionStudent, replace_first_conv

    if (arch := timm_name(name)) is not None:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is None:
            raise UsageError(f"timm publishes no pretrained weights for student {name}; "
                             "give --set student.init=PATH")
        _load_matching(model, _fetch(name, cfg.hf_hub_id, cfg.url, download), name)
        return model
    kwargs = STUDENTS.get(name).kwargs
    if isinstance(model, TorchvisionStudent) and "split" in kwargs:
        import torchvision.models as tvm

        url = tvm.get_model_weights(kwargs["arch"]).DEFAULT.url
        stock = getattr(tvm, kwargs["arch"])(weights=None, num_classes=num_classes)
        _load_matching(stock, _fetch(name, None, url, download), name)
        if spec.shape[0] != 3:
            replace_first_conv(stock, spec.shape[0])
        return TorchvisionStudent(*kwargs["split"](stock))
    raise UsageError(f"student {name} (kdcompress zoo) has no published pretrained weights; give "
                     "--set student.init=PATH, or pick a timm_* or torchvision student")
