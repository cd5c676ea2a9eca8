"""Weights files read without pickle: a .safetensors file and a Hugging Face-style model folder.

    model.safetensors          safetensors.torch.load_file; its string metadata may record classes,
                               num_classes, arch, input_shape, mean, std (JSON values)
    folder/config.json +       the layout timm's save_for_hf / push_to_hub write: config.json names the
    folder/model.safetensors   architecture ("architecture", read as timm:NAME), "num_classes",
                               "label_names", and the input size / mean / std under "pretrained_cfg".
                               pytorch_model.bin is read weights-only when there is no model.safetensors.
                               A transformers config ("architectures": [...ForImageClassification]) records
                               an architecture kdcompress cannot build: give --teacher-arch, or export it to ONNX.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ..core.errors import InputError, UsageError
from ..core.runio import safe_torch_load
from .recorded import Recorded, recorded_from_dict

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], Recorded]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable safetensors file: {' '.join(str(e).split())[:200]}") from None
    if not state:
        raise InputError(f"{path} holds no tensors")
    raw: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            raw[k] = json.loads(v)
        except json.JSONDecodeError:
            raw[k] = v
    return state, recorded_from_dict(raw)


def read_hf_folder(path: Path, arch_given: bool) -> tuple[dict[str, Tensor], Recorded, Path]:
    """(state_dict, what config.json records, the weights file)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise InputError(f"{path / 'config.json'} is not a JSON object") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path / 'config.json'} is not a JSON object")
    weights = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), None)
    if weights is None:
        raise InputError(f"model folder {path} has config.json but no {' or '.join(HF_WEIGHTS)}")
    if weights.suffix == ".safetensors":
        state, file_rec = read_safetensors(weights)
    else:
        obj = safe_torch_load(weights)
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise InputError(f"{weights} is not a state_dict")
        state, file_rec = obj, Recorded()
    arch = cfg.get("architecture")
    if not isinstance(arch, str) and not arch_given:
        names = cfg.get("architectures")
        what = f"a transformers model ({names[0]})" if isinstance(names, list) and names else "no architecture"
        raise UsageError(f"model folder {path} records {what}, which kdcompress cannot build; give "
                         "--teacher-arch NAME (timm:NAME, a torchvision or zoo name) or export it to ONNX")
    pcfg = cfg.get("pretrained_cfg") if isinstance(cfg.get("pretrained_cfg"), dict) else {}
    id2label = cfg.get("id2label")
    labels = cfg.get("label_names")
    if labels is None and isinstance(id2label, dict):
        try:
            labels = [id2label[k] for k in sorted(id2label, key=int)]
        except ValueError:
            labels = None
    raw = {"arch": f"timm:{arch}" if isinstance(arch, str) else None, "classes": labels,
           "num_classes": cfg.get("num_classes"), "input_size": pcfg.get("input_size"),
           "mean": pcfg.get("mean"), "std": pcfg.get("std")}
    rec = recorded_from_dict(raw)
    both = Recorded(arch=rec.arch or file_rec.arch, classes=rec.classes or file_rec.classes,
                    num_classes=rec.num_classes or file_rec.num_classes, shape=rec.shape or file_rec.shape,
                    mean=rec.mean or file_rec.mean, std=rec.std or file_rec.std)
    # a file's malformed value counts where the combined value is that file's (the other gives none)
    problems = tuple(p for src in (rec, file_rec) for p in src.problems if getattr(both, p[0]) == getattr(src, p[0]))
    return state, replace(both, problems=problems), weights
