"""ND (KD++) maths and projector, the trainer's prepare() step (saved, reused on resume), and the nd / ickd
presets end to end through the CLI."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.config import LossTerm
from kdcompress.core.runio import RunDir, safe_torch_load
from kdcompress.core.splits import Batch
from kdcompress.core.types import LossContext, ModelOut, PrepareContext
from kdcompress.data.specs import load_data
from kdcompress.losses import load_checked_preset
from kdcompress.losses.base import Objective
from kdcompress.losses.nd import ND, NDParams, class_centres, nd_loss
from kdcompress.teacher.formats import load_teacher
from kdcompress.train.loop import train

from .conftest import TINY_DATA
from .helpers import make_ctx, train_factories

runner = CliRunner()

# ------------------------------------------------------------------------------------------------ ND maths


@pytest.mark.parametrize("f_s, expected", [([3.0, 0.0], 0.0), ([6.0, 0.0], 0.0), ([1.5, 0.0], 0.5),
                                           ([0.0, 2.0], 1.0), ([-3.0, 0.0], 2.0)])
@pytest.mark.parametrize("centre_scale", [1.0, 7.5])
def test_nd_reference_vectors(f_s, expected, centre_scale):
    # methods.md §12: e_y = [1, 0], f_t = [0, 3]; scaling c_y changes nothing (only its direction is used)
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) * centre_scale
    valid = torch.tensor([True, True])
    got = nd_loss(torch.tensor([f_s]), torch.tensor([[0.0, 3.0]]), centres, valid, torch.tensor([0]))
    assert got.item() == pytest.approx(expected, abs=1e-7)


def test_nd_batch_mean_skips_classes_without_centre():
    centres = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    valid = torch.tensor([True, False, True])
    f_s = torch.tensor([[1.5, 0.0], [5.0, 5.0], [0.0, 2.0]], requires_grad=True)
    f_t = torch.tensor([[0.0, 3.0], [1.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    got = nd_loss(f_s, f_t, centres, valid, y)
    # sample 0: 0.5; sample 1 has no centre (skipped); sample 2: 1 - 2/3 = 1/3 -> mean over 2 samples
    assert got.item() == pytest.approx((0.5 + 1 / 3) / 2, abs=1e-7)
    got.backward()
    assert float(f_s.grad[1].abs().sum()) == 0.0
    # no sample with a centre: exactly 0, and still a finite gradient
    f_s.grad = None
    none = nd_loss(f_s[1:2], f_t[1:2], centres, valid, y[1:2])
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(f_s.grad).all()


def test_class_centres_are_per_class_sum_then_divide():
    embed = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 2, 3])
    centres, valid = class_centres(embed, labels, 5)
    torch.testing.assert_close(centres, torch.tensor([[2.0, 3.0], [0, 0], [10.0, 0.0], [0, 0], [0, 0]]))
    assert valid.tolist() == [True, False, True, False, False]  # 1, 4: no sample; 3: zero mean, no direction


def test_nd_prepare_uses_the_teacher_and_warns_about_missing_classes():
    from kdcompress.core.splits import normalize
    from kdcompress.core.types import logits_and_embed

    labels = torch.tensor([0, 2] * 10)  # class 1 has no training sample
    ctx = make_ctx(labels=labels)
    loss = ND(NDParams(), LossContext(3, 16, 16))
    loss.prepare(ctx)
    with torch.no_grad():
        _, f = logits_and_embed(ctx.teacher.model, normalize(ctx.train_split.x, ctx.spec))  # a zoo model
    torch.testing.assert_close(loss.centres[0], f[labels == 0].mean(0))
    torch.testing.assert_close(loss.centres[2], f[labels == 2].mean(0))
    assert loss.valid.tolist() == [True, False, True]
    log = ctx.console.file.getvalue()
    assert "warning:" in log and "class(es) 1 have no training sample" in log
    assert "centres" not in "".join(loss.state_dict())  # saved once in prepared.pt, not every epoch


def test_nd_before_prepare_is_an_error():
    loss = ND(NDParams(), LossContext(3, 4, 4))
    s, t = ModelOut(torch.zeros(2, 3), torch.ones(2, 4)), ModelOut(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(RuntimeError, match="prepare"):
        loss(s, t, Batch(torch.zeros(2, 1), torch.tensor([0, 1]), torch.arange(2)))


def test_projector_only_when_sizes_differ_and_in_objective_parameters():
    same = Objective((LossTerm("nd"),), LossContext(3, 16, 16))
    assert same.losses["nd"].projector is None and not list(same.parameters())
    obj = Objective((LossTerm("nd"),), LossContext(3, 16, 64))
    proj = obj.losses["nd"].projector
    shapes = [tuple(p.shape) for p in obj.parameters()]
    assert shapes == [(16,), (16,), (64, 16), (64,)]  # BatchNorm1d(16) -> Dropout -> Linear(16 -> 64)
    assert [type(m).__name__ for m in proj] == ["BatchNorm1d", "Dropout", "Linear"] and proj[1].p == 0.5
    # the projected feature is what the loss sees: gradients reach the projector
    loss = obj.losses["nd"]
    loss.load_prepared({"centres": torch.randn(3, 64), "valid": torch.ones(3, dtype=torch.bool)}, make_ctx())
    s = ModelOut(torch.zeros(4, 3), torch.randn(4, 16))
    t = ModelOut(torch.zeros(4, 3), torch.randn(4, 64))
    value, _ = obj(s, t, Batch(torch.zeros(4, 1), torch.tensor([0, 1, 2, 0]), torch.arange(4)), epoch=1)
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in obj.parameters())
    # batch of one in training mode: BatchNorm cannot run; the term is skipped (0, finite), not a crash
    with pytest.warns(UserWarning, match="batch of 1"):
        one, _ = obj(ModelOut(torch.zeros(1, 3), torch.randn(1, 16, requires_grad=True)),
                     ModelOut(torch.zeros(1, 3), torch.randn(1, 64)),
                     Batch(torch.zeros(1, 1), torch.tensor([0]), torch.arange(1)), epoch=1)
    assert one.item() == 0.0


# ------------------------------------------------------------------------------------------------ prepare()


def _train(preset_name: str, teacher_path, out, *sets: str, fingerprint: dict | None = None):
    splits = load_data(TINY_DATA)
    teacher = load_teacher(teacher_path)
    preset = load_checked_preset(preset_name, ["train.epochs=2", "train.batch_size=16", *sets])
    return train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=preset, teacher=teacher,
                 run=RunDir(out), device=torch.device("cpu"), fingerprint=fingerprint or {"preset": preset_name},
                 console=Console(file=io.StringIO()),
                 **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, preset))


def _count_teacher_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    orig = PrepareContext._teacher_pass
    monkeypatch.setattr(PrepareContext, "_teacher_pass", lambda self: calls.append(1) or orig(self))
    return calls


@pytest.mark.parametrize("preset", ["nd", "ickd"])
def test_prepared_state_is_saved_and_reused_on_resume(tiny_teacher, tmp_path, monkeypatch, preset):
    calls = _count_teacher_passes(monkeypatch)
    run = RunDir(tmp_path)
    # a run interrupted during epoch 2: prepare ran once, its state and the epoch-1 checkpoint are on disk
    orig_forward = Objective.forward

    def crash_in_epoch_2(self, s, t, batch, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return orig_forward(self, s, t, batch, epoch, **kw)

    monkeypatch.setattr(Objective, "forward", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _train(preset, tiny_teacher, tmp_path)
    assert len(calls) == 1 and run.prepared.is_file()
    saved = safe_torch_load(run.prepared)
    assert safe_torch_load(run.last_checkpoint)["epoch"] == 1
    # the per-epoch checkpoint does not carry the prepared tensors
    assert not any(k.endswith(("centres", "feats")) for k in safe_torch_load(run.last_checkpoint)["objective"])

    monkeypatch.setattr(Objective, "forward", orig_forward)
    prepares = []
    monkeypatch.setattr(Objective, "prepare", lambda self, ctx: prepares.append(1))
    result = _train(preset, tiny_teacher, tmp_path)
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert len(calls) == 1 and not prepares  # loaded, not recomputed
    again = safe_torch_load(run.prepared)
    for key, state in saved["losses"].items():
        for name, tensor in state.items():
            assert torch.equal(again["losses"][key][name], tensor), (key, name)


def test_prepared_state_of_another_configuration_is_recomputed(tiny_teacher, tmp_path, monkeypatch):
    calls = _count_teacher_passes(monkeypatch)
    _train("nd", tiny_teacher, tmp_path, fingerprint={"config": "a"})
    RunDir(tmp_path).last_checkpoint.unlink()  # only prepared.pt is left behind
    _train("nd", tiny_teacher, tmp_path, fingerprint={"config": "b"})
    assert len(calls) == 2
    assert safe_torch_load(RunDir(tmp_path).prepared)["fingerprint"] == {"config": "b"}


def test_projector_is_trained_by_the_optimizer(tiny_teacher, tmp_path):
    _train("nd", tiny_teacher, tmp_path)
    ck = safe_torch_load(RunDir(tmp_path).last_checkpoint)
    n_student = len(ck["student"]) - sum(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                         for k in ck["student"])
    proj = {k: v for k, v in ck["objective"].items() if "projector" in k and not k.endswith("num_batches_tracked")}
    weights = {k for k in proj if not k.endswith(("running_mean", "running_var"))}
    assert len(weights) == 4  # BatchNorm1d weight/bias, Linear weight/bias
    assert len(ck["optimizer"]["param_groups"][0]["params"]) == n_student + 4
    assert len(ck["optimizer"]["state"]) == n_student + 4  # every one of them stepped (momentum buffers)
    assert proj["losses.nd.projector.2.weight"].shape == (64, 16)


# ------------------------------------------------------------------------------------------------ end to end


def _distill(teacher, out, preset: str, *extra: str):
    return runner.invoke(app, ["distill", "--teacher", str(teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                               "--preset", preset, "--epochs", "1", "--set", "train.batch_size=16", "--device",
                               "cpu", "--out", str(out), "--json", *extra], catch_exceptions=False)


def _initializers(model_proto) -> list[tuple[int, ...]]:
    return sorted(tuple(t.dims) for t in model_proto.graph.initializer)


def test_nd_preset_end_to_end_and_projector_not_exported(tiny_teacher, tmp_path):
    import onnx

    from kdcompress.runtime.onnxio import onnx_bytes

    r = _distill(tiny_teacher, tmp_path, "nd")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["preset"]["name"] == "nd" and len(report["training"]["history"]) == 1
    row = report["training"]["history"][0]
    assert 0.0 < row["nd"] <= 2.0 and row["kd"] >= 0.0
    assert report["parity"]["top1_agreement"] == 1.0
    # the exported graph is the student's alone: the same initializers as exporting student.pt by itself, at
    # most the student's parameter count (BatchNorm folds into the convolutions; the projector's 1,120
    # parameters would exceed it), and no projector weight (64 x 16)
    from kdcompress.students.checkpoint import load_checkpoint
    from kdcompress.students.registry import capacity

    exported = onnx.load(str(tmp_path / "student.onnx"))
    student, _ = load_checkpoint(tmp_path / "student.pt")
    spec = load_teacher(tiny_teacher).input_spec
    alone = onnx.load_from_string(onnx_bytes(student, spec))
    assert _initializers(exported) == _initializers(alone)
    numel = sum(math.prod(t.dims) for t in exported.graph.initializer)
    assert numel <= capacity(student, spec).params
    assert (64, 16) not in _initializers(exported) and (16, 64) not in _initializers(exported)


def test_ickd_preset_end_to_end_with_k_override(tiny_teacher, tmp_path):
    r = _distill(tiny_teacher, tmp_path, "ickd", "--set", "picd.k=16", "--set", "nicd.mode=static")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["preset"]["variant"] is True
    terms = {t["kind"]: t for t in report["preset"]["terms"]}
    assert terms["picd"]["params"]["k"] == 16 and terms["nicd"]["params"]["mode"] == "static"
    # the recipe's 20 of 240 epochs, scaled to this 1-epoch run like the milestones
    assert all(terms[k]["warmup_epochs"] == 1 and terms[k]["recipe_warmup"] == 20 for k in ("kd", "picd", "nicd"))
    row = report["training"]["history"][0]
    assert row["picd.valid"] > 0.0 and row["picd"] >= 0.0 and 0.0 <= row["nicd"] <= 1.0
    assert row["nicd.valid"] == 1.0  # class-conditional retrieval: every sample has other-class neighbours
    prepared = safe_torch_load(tmp_path / "checkpoints" / "prepared.pt")["losses"]
    assert prepared["picd"]["feats"].dtype == torch.float16
    assert prepared["nicd"]["static_ids.other.8"].shape == (prepared["nicd"]["feats"].shape[0], 8)
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student",
                            "tinycnn_w8", "--preset", "ickd", "--set", "picd.kk=3", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "did you mean 'k'" in r.stderr
