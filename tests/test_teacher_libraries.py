"""Teachers from the libraries and files people train with (issue 11): timm models by --teacher-arch
timm:NAME, safetensors files, a Hugging Face-style folder as timm's save_for_hf writes it, a Lightning
checkpoint, Softmax-ended teachers, and errors that name the model that was built and the real cause."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.config import TeacherOptions
from kdcompress.core.errors import InputError, UsageError
from kdcompress.losses.kd import kd_loss
from kdcompress.teacher import load_teacher

from .helpers import randomize_bn_stats

runner = CliRunner()
IN32 = dict(input_shape=(3, 32, 32), mean=(0.5,), std=(0.25,))


@pytest.fixture(scope="module")
def timm_model():
    import timm

    torch.manual_seed(0)
    return randomize_bn_stats(timm.create_model("resnet10t", pretrained=False, num_classes=3).eval())


@pytest.fixture(scope="module")
def x():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _timm_ref(m, x):
    with torch.no_grad():
        f = m.forward_features(x)
        return m(x), m.forward_head(f, pre_logits=True)


def _check(t, m, x):
    logits, emb = _timm_ref(m, x)
    out = t.outputs(x, want_embed=True)
    assert t.embed_via == "forward_head" and t.embed_dim == emb.shape[1] == 512
    assert torch.allclose(out.logits, logits, atol=1e-5) and torch.allclose(out.embed, emb, atol=1e-5)


def test_timm_state_dict_and_safetensors_without_num_classes(tmp_path, timm_model, x):
    from safetensors.torch import save_file

    torch.save(timm_model.state_dict(), tmp_path / "m.pth")
    save_file(timm_model.state_dict(), str(tmp_path / "m.safetensors"))
    for name, fmt in (("m.pth", "state_dict"), ("m.safetensors", "safetensors")):
        # no --num-classes: the class count is read from the classifier weight (fc: 3 x 512)
        t = load_teacher(tmp_path / name, options=TeacherOptions(arch="timm:resnet10t", **IN32))
        assert t.format == fmt and t.arch == "timm:resnet10t" and t.num_classes == 3
        _check(t, timm_model, x)
    # a bare timm name works too when no other library has it
    assert load_teacher(tmp_path / "m.pth", options=TeacherOptions(arch="resnet10t", **IN32)).arch == "timm:resnet10t"
    with pytest.raises(UsageError, match="did you mean 'resnet10t'"):
        load_teacher(tmp_path / "m.pth", options=TeacherOptions(arch="timm:resnet10x", **IN32))


def test_safetensors_file_is_read_without_pickle(tmp_path, timm_model, x, monkeypatch):
    from safetensors.torch import save_file

    save_file(timm_model.state_dict(), str(tmp_path / "m.safetensors"),
              metadata={"classes": json.dumps(["ant", "bee", "cat"]), "arch": "timm:resnet10t",
                        "input_shape": "[3, 32, 32]", "mean": "[0.5, 0.5, 0.5]", "std": "[0.25, 0.25, 0.25]"})

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    t = load_teacher(tmp_path / "m.safetensors")  # everything it needs is in the file's metadata
    assert t.classes == ("ant", "bee", "cat") and t.input_spec.shape == (3, 32, 32)
    _check(t, timm_model, x)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(InputError, match="not a readable safetensors file|holds no tensors"):
        load_teacher(tmp_path / "bad.safetensors", options=TeacherOptions(arch="timm:resnet10t", **IN32))


def test_hf_folder_as_timm_save_for_hf_writes_it(tmp_path, timm_model, x):
    from timm.models import save_for_hf

    d = tmp_path / "hf"
    save_for_hf(timm_model, str(d), model_config={"label_names": ["ant", "bee", "cat"]}, safe_serialization=True)
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    t = load_teacher(d, options=TeacherOptions(input_shape=(3, 32, 32)))  # arch, classes, mean/std from config.json
    assert t.format == "hf_folder" and t.arch == "timm:resnet10t" and t.classes == ("ant", "bee", "cat")
    assert t.input_spec.mean == (0.485, 0.456, 0.406)
    _check(t, timm_model, x)
    # a transformers folder names a class kdcompress cannot build: one line that names the flag
    tr = tmp_path / "tr"
    tr.mkdir()
    (tr / "config.json").write_text(json.dumps({"architectures": ["ResNetForImageClassification"]}))
    (tr / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(UsageError, match="ResNetForImageClassification.*--teacher-arch"):
        load_teacher(tr, options=TeacherOptions(**IN32))


def test_lightning_checkpoint_with_model_prefix(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    ckpt = {"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.4.0",
            "state_dict": {**{f"model.{k}": v for k, v in tv.state_dict().items()},
                           "criterion.weight": torch.ones(4)},  # a loss's buffer beside the network
            "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}
    torch.save(ckpt, tmp_path / "epoch=7-step=700.ckpt")
    t = load_teacher(tmp_path / "epoch=7-step=700.ckpt", options=TeacherOptions(arch="resnet18", **IN32))
    assert t.format == "lightning" and t.arch == "torchvision:resnet18" and t.num_classes == 4
    xb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(t.outputs(xb).logits, tv(xb), atol=1e-5)
    # the class count recorded by save_hyperparameters() is used
    ckpt["hyper_parameters"] = {"num_classes": 4, "classes": ["a", "b", "c", "d"]}
    torch.save(ckpt, tmp_path / "hp.ckpt")
    assert load_teacher(tmp_path / "hp.ckpt", options=TeacherOptions(arch="resnet18", **IN32)).classes == tuple("abcd")


def _onnx(model, path):
    torch.onnx.export(model.eval(), (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, external_data=False,
                      input_names=["input"], output_names=["out"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))


def test_softmax_ended_onnx_teacher_gives_the_same_kd_loss(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _onnx(net, tmp_path / "logits.onnx")
        _onnx(nn.Sequential(net, nn.Softmax(dim=1)), tmp_path / "probs.onnx")
    opts = TeacherOptions(num_classes=5, **IN32)
    plain, probs = (load_teacher(tmp_path / "logits.onnx", options=opts),
                    load_teacher(tmp_path / "probs.onnx", options=opts))
    assert plain.output == "logits" and probs.output == "probabilities"
    xb = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    z_s = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    zt_plain, zt_probs = plain.outputs(xb).logits, probs.outputs(xb).logits
    for T in (1.0, 4.0):
        a, b = kd_loss(z_s, zt_plain, T), kd_loss(z_s, zt_probs, T)
        assert abs(a.item() - b.item()) < 1e-5, (T, a, b)
    # and the same for a torch teacher ending in Softmax (here scripted); inspect says what it found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Sequential(net, nn.Softmax(dim=1))).save(str(tmp_path / "probs.pt"))
    ts = load_teacher(tmp_path / "probs.pt", options=opts)
    assert ts.output == "probabilities" and ts.embed_via == "children"
    out = ts.outputs(xb, want_embed=True)
    assert abs(kd_loss(z_s, out.logits, 4.0).item() - kd_loss(z_s, zt_plain, 4.0).item()) < 1e-5
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "probs.onnx"), "--num-classes", "5",
                            "--input-shape", "3,32,32", "--mean", "0.5", "--std", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"] == "probabilities"


def test_shape_mismatch_names_torchvision_model_and_the_fix(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(InputError) as e:  # the zoo's resnet18 is tried too; the message names the one that matches
        load_teacher(tmp_path / "r18.pth", options=TeacherOptions(arch="resnet18", num_classes=3, **IN32))
    msg = str(e.value)
    assert "torchvision's resnet18" in msg and "fc.weight" in msg and "--num-classes 10" in msg, msg


def test_trusted_pickle_whose_module_is_missing_says_so(tmp_path):
    (tmp_path / "mynets.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import mynets; "
            "torch.save(mynets.Net(4, 3), sys.argv[1] + '/net.pt')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    (tmp_path / "mynets.py").unlink()
    with pytest.raises(InputError, match="module 'mynets' cannot be imported"):
        load_teacher(tmp_path / "net.pt", trust=True,
                     options=TeacherOptions(input_shape=(4, 1, 1), mean=(0.0,), std=(1.0,)))


def test_a_weights_only_teacher_names_the_flag_every_teacher_command_takes(tmp_path, timm_model):
    torch.save(timm_model.state_dict(), tmp_path / "m.pth")  # distill, select, validate, inspect all take it
    with pytest.raises(UsageError, match="give --teacher-arch NAME"):
        load_teacher(tmp_path / "m.pth")


class _Functional(nn.Module):
    """Children conv, fc; forward does more than run them in order (a functional op between)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).amax((2, 3)) * 2.0)


def test_scripted_teacher_whose_children_do_not_compose_is_logits_only(tmp_path):
    from kdcompress.core.types import NEED_TEACHER_EMBED

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Functional().eval()).save(str(tmp_path / "f.pt"))
    t = load_teacher(tmp_path / "f.pt", options=TeacherOptions(**IN32))
    assert t.logits_only and t.embed_via is None  # the children route did not reproduce its logits
    with pytest.raises(UsageError, match="preset 'nd' needs the teacher's penultimate features"):
        t.check_needs([NEED_TEACHER_EMBED], "nd")
