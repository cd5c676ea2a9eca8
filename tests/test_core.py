"""Unit tests of the foundation: KD maths, warm-up, registry, presets and overrides, checkpoints, data,
ONNX export parity and the latency harness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcompress.core.config import apply_overrides, builtin_preset_names
from kdcompress.core.errors import InputError, UsageError
from kdcompress.core.registry import Registry
from kdcompress.core.spec import InputSpec
from kdcompress.core.types import LossContext, ModelOut
from kdcompress.data.specs import load_data
from kdcompress.losses import load_checked_preset
from kdcompress.losses.base import LOSSES, Objective, warmup_factor
from kdcompress.losses.kd import kd_loss
from kdcompress.train.augment import augment

from .helpers import randomize_bn_stats

# ------------------------------------------------------------------------------------------ KD maths

def test_kd_hand_computed_value():
    # methods.md §12: C=2, z_t=[ln 3, 0], z_s=[0, 0], T=1 -> 0.75 ln 1.5 + 0.25 ln 0.5
    zt = torch.tensor([[math.log(3.0), 0.0]])
    zs = torch.zeros(1, 2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert abs(expected - 0.1308120) < 1e-7
    assert kd_loss(zs, zt, 1.0).item() == pytest.approx(expected, abs=1e-7)


def test_kd_zero_when_equal_and_shift_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 10, generator=g)
    for T in (1.0, 4.0):
        assert kd_loss(z, z, T).item() == pytest.approx(0.0, abs=1e-6)
    zs = torch.randn(5, 10, generator=g)
    assert kd_loss(zs + 3.0, z - 7.0, 4.0).item() == pytest.approx(kd_loss(zs, z, 4.0).item(), rel=1e-5)


def test_kd_batchmean_and_t_squared():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    # duplicating the batch leaves the value unchanged (batch mean, not sum; not mean over B*C)
    assert kd_loss(torch.cat([zs, zs]), torch.cat([zt, zt]), 2.0).item() == pytest.approx(
        kd_loss(zs, zt, 2.0).item(), rel=1e-6)
    # explicit per-sample formula with T^2
    T = 3.0
    pt, ps = torch.softmax(zt / T, 1), torch.softmax(zs / T, 1)
    manual = (pt * (pt.log() - ps.log())).sum(1).mean() * T * T
    assert kd_loss(zs, zt, T).item() == pytest.approx(manual.item(), rel=1e-5)


def test_kd_high_temperature_limit():
    # T^2 KL -> (1/(2C)) sum (d - mean d)^2, d = z_t - z_s; float64 at T=1e4 (methods.md §12)
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(3, 10, generator=g, dtype=torch.float64), torch.randn(3, 10, generator=g, dtype=torch.float64)
    T = 1e4
    log_ps = torch.log_softmax(zs / T, 1)
    log_pt = torch.log_softmax(zt / T, 1)
    val = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T * T
    d = zt - zs
    limit = ((d - d.mean(1, keepdim=True)) ** 2).sum(1).mean() / (2 * 10)
    assert val.item() == pytest.approx(limit.item(), rel=5e-4)
    # and the fp32 implementation agrees with the limit at T=100 within 2%
    assert kd_loss(zs.float(), zt.float(), 100.0).item() == pytest.approx(limit.item(), rel=2e-2)


def test_kd_finite_gradients_edge_cases():
    for zs, zt in [(torch.randn(1, 5), torch.randn(1, 5)),
                   (torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]]))]:
        zs = zs.clone().requires_grad_(True)
        loss = kd_loss(zs, zt, 4.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
    for dt in (torch.float16, torch.bfloat16):
        zs = torch.randn(4, 10).to(dt).requires_grad_(True)
        loss = kd_loss(zs, torch.randn(4, 10).to(dt), 4.0)
        assert loss.dtype == torch.float32
        loss.backward()
        assert torch.isfinite(zs.grad).all()


# ------------------------------------------------------------------------------------------ objective

def test_warmup_is_one_indexed():
    assert [warmup_factor(e, 20) for e in (1, 10, 20, 21)] == [0.05, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0 and warmup_factor(1, 1) == 1.0
    with pytest.raises(ValueError):
        warmup_factor(0, 20)


def test_objective_combines_weights_and_warmup():
    preset = load_checked_preset("kd", ["kd.warmup_epochs=4"])
    obj = Objective(preset.terms, LossContext(num_classes=5))
    g = torch.Generator().manual_seed(3)
    s, t = ModelOut(torch.randn(6, 5, generator=g)), ModelOut(torch.randn(6, 5, generator=g))

    class B:
        y = torch.tensor([0, 1, 2, 3, 4, 0])

    total, parts = obj(s, t, B(), epoch=1)
    ce = torch.nn.functional.cross_entropy(s.logits, B.y).item()
    kd = kd_loss(s.logits, t.logits, 4.0).item()
    assert parts["ce"] == pytest.approx(ce, rel=1e-6) and parts["kd"] == pytest.approx(kd, rel=1e-6)
    assert total.item() == pytest.approx(0.1 * ce + 0.9 * 0.25 * kd, rel=1e-6)
    total4, _ = obj(s, t, B(), epoch=4)
    assert total4.item() == pytest.approx(0.1 * ce + 0.9 * kd, rel=1e-6)


# ------------------------------------------------------------------------------------------ registry / presets

def test_registry_duplicates_and_did_you_mean():
    r: Registry[int] = Registry("thing")
    r.register("alpha", 1)
    with pytest.raises(ValueError):
        r.register("alpha", 2)
    with pytest.raises(UsageError, match="did you mean 'alpha'"):
        r.get("alpah")
    assert r.names() == ["alpha"] and "alpha" in r


@pytest.mark.parametrize("name", builtin_preset_names())
def test_every_builtin_preset_loads_and_builds(name):
    p = load_checked_preset(name)
    assert p.terms and p.reference and p.description
    Objective(p.terms, LossContext(num_classes=10, student_embed_dim=16, teacher_embed_dim=32))
    for t in p.terms:
        assert t.kind in LOSSES


def test_overrides_reach_params_and_train():
    p = load_checked_preset("kd", ["kd.T=2", "kd.weight=0.5", "train.lr=0.1", "train.epochs=7"])
    kd = {t.key: t for t in p.terms}["kd"]
    assert kd.params["T"] == 2 and kd.weight == 0.5 and p.train.lr == 0.1 and p.train.epochs == 7
    assert p.train.scaled_milestones() == [4, 5, 6]  # 150/180/210 of 240, scaled to 7 epochs
    with pytest.raises(UsageError, match="train.batch_size"):
        apply_overrides(p, ["train.batch_size=0"])
    with pytest.raises(UsageError, match="key=value"):
        apply_overrides(p, ["kd.T"])


def test_user_preset_file_and_malformed_toml(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\n[[loss]]\nkind = "ce"\n[[loss]]\nkind = "kd"\nweight = 2.0\nparams = { T = 3.0 }\n')
    p = load_checked_preset(str(good))
    assert p.name == "mine" and p.terms[1].weight == 2.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[[loss]\nkind=")
    with pytest.raises(InputError, match="not valid TOML"):
        load_checked_preset(str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[loss]]\nkind = "kdd"\n')
    with pytest.raises(UsageError, match="did you mean 'kd'"):
        load_checked_preset(str(unknown))


# ------------------------------------------------------------------------------------------ data

def test_digits_split_is_stratified_and_fixed():
    a, b = load_data("digits"), load_data("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 180, 360)
    assert torch.equal(a.test.y, b.test.y) and a.num_classes == 10 and a.shape == (1, 8, 8)
    counts = torch.bincount(a.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert 0.0 <= float(a.train.x.min()) and float(a.train.x.max()) <= 1.0


def test_batches_carry_indices_and_shard_disjointly():
    d = load_data("synthetic:classes=3,size=8,n=90")
    seen = torch.cat([b.index for b in d.train.batches(10, shuffle=True, seed=1, epoch=1)])
    assert sorted(seen.tolist()) == list(range(len(d.train)))
    for b in d.train.batches(7, shuffle=True, seed=1, epoch=2):
        assert torch.equal(b.x, d.train.x[b.index]) and torch.equal(b.y, d.train.y[b.index])
    r0 = torch.cat([b.index for b in d.train.batches(5, shuffle=True, epoch=3, rank=0, world=2)])
    r1 = torch.cat([b.index for b in d.train.batches(5, shuffle=True, epoch=3, rank=1, world=2)])
    assert len(r0) == len(r1) and set(r0.tolist()) | set(r1.tolist()) == set(range(len(d.train)))


def test_augment_shift_keeps_content_and_shape():
    x = torch.rand(16, 1, 8, 8)
    y = augment(x, "shift", torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # a translation by at most one pixel keeps the interior 6x6 of the original somewhere inside
    for i in range(16):
        found = any(torch.equal(y[i, :, 1 + dy:7 + dy, 1 + dx:7 + dx], x[i, :, 1:7, 1:7])
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert found
    assert torch.equal(augment(x, "none"), x)


def test_bad_synthetic_spec():
    with pytest.raises(UsageError, match="did you mean 'classes'"):
        load_data("synthetic:clases=3")
    with pytest.raises(UsageError, match="integer"):
        load_data("synthetic:classes=x")


# ------------------------------------------------------------------------------------------ checkpoints / export

def test_checkpoint_round_trip_weights_only(tmp_path):
    from kdcompress.core.checkpoint import save_checkpoint
    from kdcompress.students.registry import build_student
    from kdcompress.teacher.formats import load_teacher

    spec = InputSpec((1, 8, 8), (0.3,), (0.4,))
    m = build_student("resnet8", 4, spec).eval()
    path = tmp_path / "t.pt"
    save_checkpoint(path, m, "resnet8", ("a", "b", "c", "d"), spec, metrics={"test_accuracy": 0.5})
    t = load_teacher(path)
    assert t.arch == "resnet8" and t.classes == ("a", "b", "c", "d") and t.input_spec == spec
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(t.model(x), m(x))
    raw = torch.load(path, weights_only=True)  # the format needs no unpickling of code
    assert raw["format"] == "kdcompress.checkpoint"


def test_onnx_export_parity_dynamic_batch_and_metadata(tmp_path):
    import onnxruntime as ort

    from kdcompress.runtime.onnxio import read_metadata
    from kdcompress.export.onnx import export_onnx
    from kdcompress.students.registry import build_student

    spec = InputSpec((1, 8, 8), (0.3,), (0.4,))
    torch.manual_seed(0)
    m = build_student("resnet8", 5, spec).eval()
    randomize_bn_stats(m, mean=(-0.5, 0.5), var=(0.5, 2.0))  # so parity means something
    art = export_onnx(m, spec, tmp_path / "m.onnx", metadata={"classes": ["a"] * 5, "preset": "kd"})
    meta = read_metadata(art.path)
    assert meta["preset"] == "kd" and meta["classes"] == '["a", "a", "a", "a", "a"]'
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and sess.get_outputs()[0].name == "logits"
    for b in (1, 7):
        x = torch.randn(b, 1, 8, 8)
        out = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = m(x).numpy()
        assert out.shape == (b, 5)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_latency_harness_percentiles_ordered():
    from kdcompress.runtime.onnxio import onnx_bytes
    from kdcompress.runtime.ortbench import make_session, measure_latency
    from kdcompress.core.system import cpu_limit
    from kdcompress.students.registry import build_student

    spec = InputSpec((1, 8, 8), (0.0,), (1.0,))
    sess = make_session(onnx_bytes(build_student("tinycnn_w8", 3, spec), spec))
    st = measure_latency(sess, (1, 1, 8, 8), warmup=5, min_iters=50, min_time_s=0.05)
    assert st.iters >= 50 and 0 < st.min <= st.p50 <= st.p90 <= st.p99
    assert st.throughput == pytest.approx(1000.0 / st.mean, rel=1e-6)
    assert 1 <= cpu_limit() <= (torch.get_num_threads() * 64)


def test_unknown_provider_and_missing_cuda():
    from kdcompress.core.errors import EnvironmentProblem
    from kdcompress.runtime.ortbench import make_session
    from kdcompress.core.system import resolve_device

    with pytest.raises(EnvironmentProblem):
        make_session(b"", provider="npu")
    if not torch.cuda.is_available():
        with pytest.raises(EnvironmentProblem, match="no CUDA GPU"):
            resolve_device("cuda")


def test_file_sha256_is_remembered_only_for_files_not_just_written(tmp_path, monkeypatch):
    """core.fsguard.file_sha256 reads a large teacher once per process (a cold select asks twice), but a
    file rewritten in the same coarse mtime tick is never taken for its old self ("racy git")."""
    import hashlib
    import os

    import kdcompress.core.fsguard as fsg

    f = tmp_path / "t.bin"
    f.write_bytes(b"a" * 1000)
    assert fsg.file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"b" * 1000)  # same size, at once: maybe the same mtime, but it was just written
    assert fsg.file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    old = f.stat().st_mtime_ns - 60_000_000_000
    os.utime(f, ns=(old, old))  # an old file: remembered
    want_b, want_c, real = (hashlib.sha256(b"b" * 1000).hexdigest(), hashlib.sha256(b"c" * 1000).hexdigest(),
                            hashlib.sha256)
    hashed = []
    monkeypatch.setattr(fsg.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    assert fsg.file_sha256(f) == fsg.file_sha256(f) == want_b and len(hashed) == 1  # read once
    f.write_bytes(b"c" * 1000)  # rewritten later: a new mtime, read again
    assert fsg.file_sha256(f) == want_c and len(hashed) == 2
