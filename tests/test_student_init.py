"""`distill --student-init`: a state_dict for the chosen student (strict, one-line misfit naming the
student) and `pretrained` from the local torch hub / Hugging Face caches only (a miss says where it looked)."""

from __future__ import annotations

import pytest
import torch

from kdcompress.core.errors import EnvironmentProblem, InputError, UsageError
from kdcompress.core.spec import InputSpec
from kdcompress.students import build_student, initialise

S32 = InputSpec((3, 32, 32), (0.5,) * 3, (0.25,) * 3)
S96 = InputSpec((3, 96, 96), (0.5,) * 3, (0.25,) * 3)


def test_state_dict_path_loads_and_a_misfit_names_the_student(tmp_path):
    torch.manual_seed(0)
    src = build_student("tinycnn_w8", 3, S32)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "a.pt")
    torch.save(src.state_dict(), tmp_path / "b.pth")
    for f in ("a.pt", "b.pth"):
        m = initialise(build_student("tinycnn_w8", 3, S32), "tinycnn_w8", str(tmp_path / f), S32, 3)
        assert torch.equal(m.fc.weight, src.fc.weight) and torch.equal(m.features[0].weight, src.features[0].weight)
    with pytest.raises(InputError, match=r"does not fit student tinycnn_w16: features.0.weight is \(8, 3, 3, 3\)"):
        initialise(build_student("tinycnn_w16", 3, S32), "tinycnn_w16", str(tmp_path / "b.pth"), S32, 3)
    with pytest.raises(InputError, match="file not found"):
        initialise(build_student("tinycnn_w8", 3, S32), "tinycnn_w8", str(tmp_path / "nope.pt"), S32, 3)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torchhub"))
    yield tmp_path
    torch.hub.set_dir(old)


def test_pretrained_without_cache_fails_saying_where_it_looked(empty_caches):
    with pytest.raises(EnvironmentProblem) as e:
        initialise(build_student("timm_mobilenetv3_small_050", 3, S96), "timm_mobilenetv3_small_050", "pretrained",
                   S96, 3)
    msg = str(e.value)
    assert str(empty_caches / "hf") in msg and "--set data.download=true" in msg and "\n" not in msg
    with pytest.raises(EnvironmentProblem, match="torchhub/checkpoints/resnet18"):
        initialise(build_student("resnet18", 3, S96), "resnet18", "pretrained", S96, 3)
    with pytest.raises(UsageError, match="no published pretrained weights"):
        initialise(build_student("tinycnn_w8", 3, S32), "tinycnn_w8", "pretrained", S32, 3)


def test_pretrained_from_the_torch_hub_cache(empty_caches):
    import torchvision

    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(weights=None)  # stands in for the published 1000-class weights
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    ckpt = empty_caches / "torchhub" / "checkpoints" / url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), ckpt)
    m = initialise(build_student("resnet18", 5, S96), "resnet18", "pretrained", S96, 5)
    assert torch.equal(m.features[0].weight, imagenet.conv1.weight)  # the trunk is the cached weights
    assert m.fc.out_features == 5  # the classifier keeps its fresh init for this task's classes
    with torch.no_grad():
        assert m(torch.randn(2, 3, 96, 96)).shape == (2, 5)
