"""The student zoo: every registered student builds, follows the common interface (forward_features /
forward_head(pre_logits) / get_classifier / embed_dim, matching forward()), reports its capacity and
exports to ONNX with ONNX Runtime parity at its smallest sensible input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kdcompress.core.spec import InputSpec
from kdcompress.core.types import logits_and_embed
from kdcompress.students.registry import STUDENTS, capacity, width_tag
from kdcompress.students.torchvision_zoo import LARGE_MIN_INPUT

ALL = STUDENTS.names()
SMALL = [n for n in ALL if STUDENTS.get(n).min_input is None]
LARGE = [n for n in ALL if STUDENTS.get(n).min_input is not None]
# One per family, cheap to export, always exported; the rest of the zoo only with `pytest -m slow`.
# (TinyCNN is exported by test_select's real measurement and by the distill tests.)
EXPORT_FAST = ["resnet8", "wrn10_1", "mobilenetv2_x0_25", "shufflenetv2_x0_5", "vgg8_x0_25", "squeezenet1_1",
               "timm_mobilenetv3_small_050"]
TORCHVISION = [n for n in LARGE if STUDENTS.get(n).family.startswith("tv_")]
TIMM = [n for n in LARGE if STUDENTS.get(n).family.startswith("timm_")]


def smallest_spec(name: str, channels: int = 1) -> InputSpec:
    # CIFAR-style nets reach 1x1 at 8 px (digits); the torchvision families at 32 px
    side = 8 if name in SMALL else 32
    return InputSpec((channels, side, side), (0.5,) * channels, (0.25,) * channels)


def calibrated(model: nn.Module) -> nn.Module:
    """Random but non-trivial BN statistics and affine parameters, so parity compares real numbers
    (fresh BN is the identity in eval mode and lets deep nets collapse to near-constant outputs)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def test_zoo_spans_both_regimes():
    families = {STUDENTS.get(n).family for n in ALL}
    assert {"cifar_resnet", "wrn", "mobilenetv2_cifar", "shufflenetv2_cifar", "vgg_cifar", "tinycnn"} <= families
    assert {"tv_mobilenet_v3", "tv_shufflenet_v2", "tv_mnasnet", "tv_efficientnet", "tv_regnet", "tv_resnet",
            "tv_squeezenet"} <= families
    for n in ("wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2", "mobilenetv2_x0_5", "shufflenetv2_x1_0", "vgg8_x1_0",
              "vgg11_x0_5", "vgg13_x1_0", "mobilenet_v3_small", "efficientnet_b3", "regnet_y_800mf", "resnet50"):
        assert n in STUDENTS, n


def test_width_tag():
    assert [width_tag(w) for w in (0.25, 0.5, 1.0, 1.5, 2.0)] == ["0_25", "0_5", "1_0", "1_5", "2_0"]


@pytest.mark.parametrize("side, small, large", [(8, True, False), (32, True, False), (64, True, False),
                                                (65, False, True), (224, False, True)])
def test_input_regime_follows_the_larger_side(side, small, large):
    spec = InputSpec((3, side, side), (0.0,) * 3, (1.0,) * 3)
    assert all(STUDENTS.get(n).suits(spec) == small for n in SMALL)
    assert all(STUDENTS.get(n).suits(spec) == large for n in LARGE)
    # a wide image is judged by its larger side: no input size falls between the two regimes
    wide = InputSpec((3, 48, 96), (0.0,) * 3, (1.0,) * 3)
    assert not STUDENTS.get("resnet8").suits(wide) and STUDENTS.get("resnet18").suits(wide)
    assert LARGE_MIN_INPUT == 65


def test_capacity_hand_computed():
    # TinyCNN w8 on 1x8x8, 10 classes: conv 1->8 3x3 at 8x8, conv 8->16 3x3 stride 2 at 4x4, linear 16->10;
    # a multiply-add counts 2 FLOPs, BN/ReLU/pooling count none
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    model = STUDENTS.get("tinycnn_w8").build(10, spec)
    cap = capacity(model, spec)
    assert cap.flops == 2 * (8 * 64 * 9 * 1) + 2 * (16 * 16 * 9 * 8) + 2 * 16 * 10 == 46400
    assert cap.params == (8 * 9) + 2 * 8 + (16 * 8 * 9) + 2 * 16 + (16 * 10 + 10) == 1442


def test_flops_memo_is_used_only_for_the_same_architecture(tmp_path, monkeypatch):
    import kdcompress.students.registry as reg
    from torch.utils import flop_counter

    monkeypatch.setenv("KDCOMPRESS_CACHE", str(tmp_path))
    monkeypatch.setattr(reg._FlopsMemo, "store", None)
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    model = STUDENTS.get("tinycnn_w8").build(10, spec)
    assert capacity(model, spec, memo=True).flops == 46400
    stored = json.loads((tmp_path / "flops.json").read_text())
    assert list(stored.values()) == [46400]

    counted = []
    real = flop_counter.FlopCounterMode

    class Counting(real):
        def __enter__(self):
            counted.append(1)
            return super().__enter__()
    monkeypatch.setattr(flop_counter, "FlopCounterMode", Counting)
    monkeypatch.setattr(reg._FlopsMemo, "store", None)  # a new process: read back from disk
    again = STUDENTS.get("tinycnn_w8").build(10, spec)  # other weights, same architecture
    assert capacity(again, spec, memo=True) == capacity(model, spec) and len(counted) == 1  # only the unmemoised one
    # another architecture, input shape or class count is counted, never taken from the memo
    assert capacity(STUDENTS.get("tinycnn_w8").build(3, spec), spec, memo=True).flops == 46400 - 2 * 16 * 7
    wide = InputSpec((1, 16, 16), (0.5,), (0.25,))
    assert capacity(STUDENTS.get("tinycnn_w8").build(10, wide), wide, memo=True).flops > 46400
    assert len(counted) == 3
    # TorchScript hides its code from repr: never memoised
    scripted = torch.jit.script(model)
    assert reg.flops_key(scripted, spec, 1442) is None
    # a broken memo file only costs a recount
    (tmp_path / "flops.json").write_text("{not json")
    monkeypatch.setattr(reg._FlopsMemo, "store", None)
    assert capacity(model, spec, memo=True).flops == 46400 and len(counted) == 4


@pytest.mark.parametrize("name", ALL)
def test_interface_matches_forward(name):
    spec = smallest_spec(name)  # 1 channel: the stem of every family adapts to in_channels != 3
    model = calibrated(STUDENTS.get(name).build(7, spec))
    x = torch.randn(2, *spec.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        f = model.forward_features(x)
        emb = model.forward_head(f, pre_logits=True)
        via_head = model.forward_head(f)
        both = logits_and_embed(model, x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert f.ndim == 4 and f.shape[0] == 2
    assert emb.shape == (2, model.embed_dim)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 7
    torch.testing.assert_close(via_head, logits, rtol=0, atol=0)
    torch.testing.assert_close(model.get_classifier()(emb), logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[0], logits, rtol=1e-5, atol=1e-6)
    cap = capacity(model, spec)
    assert cap.params == sum(p.numel() for p in model.parameters()) and cap.flops > 0


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_three_channels_keeps_the_stock_stem(name):
    import torchvision.models as tvm

    spec = smallest_spec(name, channels=3)
    model = STUDENTS.get(name).build(5, spec)
    kwargs = STUDENTS.get(name).kwargs
    stock = getattr(tvm, kwargs["arch"])(weights=None, num_classes=5)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 3
    # the wrapper re-uses torchvision's layers: same parameter count except SqueezeNet's linear head,
    # whose 1x1-conv weights become a linear layer's (same count as well)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in stock.parameters())


def test_timm_students_cover_the_mobile_families_and_are_timm_models():
    import timm

    families = {STUDENTS.get(n).family for n in TIMM}
    assert {"timm_mobilenetv3", "timm_mobilenetv4", "timm_efficientnet", "timm_ghostnet", "timm_lcnet"} <= families
    for n in ("timm_mobilenetv3_small_100", "timm_mobilenetv3_large_100", "timm_mobilenetv4_conv_small",
              "timm_mobilenetv4_conv_medium", "timm_efficientnet_lite0", "timm_efficientnet_b0"):
        assert n in TIMM and STUDENTS.get(n).min_input == LARGE_MIN_INPUT
    spec = InputSpec((3, 96, 96), (0.5,) * 3, (0.25,) * 3)
    model = STUDENTS.get("timm_mobilenetv3_small_100").build(5, spec)
    stock = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=5)
    assert list(model.state_dict()) == list(stock.state_dict())  # timm's own keys: its checkpoints load as they are
    assert model.embed_dim == stock.head_hidden_size == 1024


def _export_parity(name: str) -> None:
    import onnxruntime as ort

    from kdcompress.runtime.onnxio import INPUT_NAME, onnx_bytes

    spec = smallest_spec(name)
    model = calibrated(STUDENTS.get(name).build(6, spec))
    data = onnx_bytes(model, spec)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    x = torch.randn(3, *spec.shape, generator=torch.Generator().manual_seed(2))  # batch 3: the axis is dynamic
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {INPUT_NAME: x.numpy()})[0]
    assert out.shape == (3, 6)
    scale = float(np.abs(ref).max())
    assert scale > 0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", EXPORT_FAST)
def test_onnx_export_parity_representatives(name):
    _export_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in EXPORT_FAST and n != "tinycnn_w8"])
def test_onnx_export_parity_whole_zoo(name):
    _export_parity(name)
