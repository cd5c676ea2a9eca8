"""The teacher-output cache (train.teacher_cache=views): the views replay exactly, the cached logits are the
online teacher's on the same view (to fp16 precision), top-k storage reconstructs a distribution as FKD does,
a cached run trains without a teacher forward and resumes to the uninterrupted weights, one cache serves
every preset with the same teacher and views, and a cache that would not fit is refused before it is built."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.config import TrainConfig
from kdcompress.core.errors import EnvironmentProblem, Interrupted, UsageError
from kdcompress.core.runio import RunDir, safe_torch_load
from kdcompress.core.splits import normalize
from kdcompress.data.specs import load_data
from kdcompress.losses import load_checked_preset
from kdcompress.teacher.formats import load_teacher
from kdcompress.train import teacher_cache as tc
from kdcompress.train.augment import augment_view
from kdcompress.train.loop import train
from kdcompress.train.step import StepEngine

from .conftest import TINY_DATA
from .helpers import sigterm_at_step, train_factories

CACHED = ["train.teacher_cache=views", "train.cache_views=3"]


def _key(teacher, splits, views=3, k=3, embed=False, mode="shift"):
    return tc.cache_key(teacher_sha256=teacher.sha256, data=TINY_DATA, split=splits.train, spec=teacher.input_spec,
                        mode=mode, views=views, seed=0, k=k, num_classes=3, embed=embed)


def test_config_validates_the_cache_fields():
    assert TrainConfig().teacher_cache == "auto"  # decided per run (train.cachechoice)
    for bad in ({"teacher_cache": "disk"}, {"cache_views": 0}, {"cache_topk": -1}):
        with pytest.raises(UsageError, match="train\\."):
            TrainConfig(**bad)


def test_a_view_is_a_function_of_seed_sample_and_slot():
    x = torch.rand(6, 3, 8, 8)
    idx = torch.tensor([5, 9, 2, 7, 0, 3])
    a = augment_view(x, idx, 2, seed=1, mode="crop_flip")
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    b = augment_view(x[perm], idx[perm], 2, seed=1, mode="crop_flip")
    assert torch.equal(a[perm], b)  # another batch order: the same view of each sample
    assert not torch.equal(a, augment_view(x, idx, 3, seed=1, mode="crop_flip"))
    assert not torch.equal(a, augment_view(x, idx, 2, seed=2, mode="crop_flip"))
    assert torch.equal(augment_view(x, idx, 2, seed=1, mode="none"), x)
    # the cache's precomputed draw tables give the same views as hashing per step
    for mode in ("shift", "crop_flip", "none"):
        cache = tc.TeacherCache(torch.zeros(10, 4, 3, dtype=torch.float16), None, None, 3, seed=1, mode=mode)
        view = cache.epoch_views(idx, 5)
        assert torch.equal(view, tc.mix(1, 5, idx, 7) % 4) and int(view.max()) < 4
        assert torch.equal(cache.inputs(x, idx, view), augment_view(x, idx, view, 1, mode))


def test_cached_logits_equal_the_online_teachers_on_the_same_view(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    splits = load_data(TINY_DATA, teacher.input_spec)
    key = _key(teacher, splits, embed=True)
    cache = tc.load_or_build(teacher.outputs, key=key, split=splits.train, spec=teacher.input_spec,
                             device=torch.device("cpu"), embed_dim=teacher.embed_dim, batch_size=16, amp=False,
                             console=Console(file=io.StringIO()), record=None)
    assert cache.values.dtype == torch.float16 and cache.values.shape == (len(splits.train), 3, 3)
    assert cache.classes is None and cache.embed.shape == (len(splits.train), 3, teacher.embed_dim)
    b = next(splits.train.batches(20, shuffle=True, seed=4))
    for v in range(3):
        view = torch.full_like(b.index, v)
        with torch.inference_mode():
            online = teacher.outputs(normalize(augment_view(b.x, b.index, view, 0, "shift"), teacher.input_spec), True)
        got = cache.lookup(b.index, view)
        assert torch.allclose(got.logits, online.logits, rtol=2e-3, atol=2e-3)  # fp16: 11 significant bits
        assert torch.allclose(got.embed, online.embed, rtol=2e-3, atol=2e-3)
        assert torch.equal(got.logits, online.logits.half().float())  # exactly the fp16 rounding of them
    # a second call reads the file instead of running the teacher
    calls = []
    again = tc.load_or_build(lambda x, e: calls.append(1), key=key, split=splits.train, spec=teacher.input_spec,
                             device=torch.device("cpu"), embed_dim=teacher.embed_dim, batch_size=16, amp=False,
                             console=Console(file=io.StringIO()), record=None)
    assert not calls and torch.equal(again.values, cache.values)


def test_top_k_keeps_the_largest_and_spreads_the_rest_uniformly():
    logits = torch.randn(4, 50) * 3
    logp = torch.log_softmax(logits, 1)
    top = logp.topk(5, 1)
    full = tc.reconstruct(top.values, top.indices, 50)
    p = full.exp()
    assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    assert torch.equal(full.gather(1, top.indices), top.values)
    rest = torch.ones(4, 50, dtype=torch.bool).scatter(1, top.indices, False)
    others = p[rest].view(4, 45)
    assert torch.allclose(others, others[:, :1].expand(-1, 45))  # uniform
    assert torch.allclose(others[:, 0] * 45, 1 - top.values.exp().sum(1), atol=1e-6)
    assert tc.stored_k(10, 0) == 10 and tc.stored_k(1000, 0) == tc.AUTO_TOPK and tc.stored_k(10, 4) == 4


def _train(teacher_path: Path, out: Path, preset="kd", extra=(), epochs=3):
    teacher = load_teacher(teacher_path)
    splits = load_data(TINY_DATA, teacher.input_spec)
    p = load_checked_preset(preset, [f"train.epochs={epochs}", "train.batch_size=16", *extra])
    return train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=p, teacher=teacher,
                 run=RunDir(out), device=torch.device("cpu"), fingerprint={"p": preset, "data": TINY_DATA},
                 console=Console(file=io.StringIO()),
                 **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, p))


def test_a_cached_run_trains_without_the_teacher_and_resumes_to_the_same_weights(tiny_teacher, tmp_path, monkeypatch):
    from kdcompress.teacher.model import Teacher

    forwards = []
    orig_outputs = Teacher.outputs
    monkeypatch.setattr(Teacher, "outputs", lambda self, x, want_embed=False: forwards.append(len(x))
                        or orig_outputs(self, x, want_embed))
    ref = _train(tiny_teacher, tmp_path / "ref", extra=CACHED)
    n_train = len(load_data(TINY_DATA).train)
    assert sum(forwards) == 3 * n_train  # the build pass: 3 views of every sample, then no teacher in the steps
    record = json.loads((tmp_path / "ref" / "teacher_cache.json").read_text())
    assert record["key"]["views"] == 3 and Path(record["path"]).is_file()
    assert Path(record["path"]).parent == Path(os.environ["KDCOMPRESS_CACHE"]) / "teacher-outputs"

    orig = sigterm_at_step(monkeypatch, epoch=2, step=2)
    forwards.clear()
    with pytest.raises(Interrupted):
        _train(tiny_teacher, tmp_path / "run", extra=CACHED)
    assert not forwards  # the first run's cache is reused
    monkeypatch.setattr(StepEngine, "step", orig)
    got = _train(tiny_teacher, tmp_path / "run", extra=CACHED)
    assert (got.resumed_from_epoch, got.resumed_from_step) == (2, 2) and not forwards
    a = safe_torch_load(tmp_path / "run" / "student.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "ref" / "student.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "train_seconds"} for r in got.history]
    assert strip == [{k: v for k, v in r.items() if k != "train_seconds"} for r in ref.history]

    # dkd, with the same teacher and views, reads the same cache; its weights differ from kd's
    _train(tiny_teacher, tmp_path / "dkd", preset="dkd", extra=CACHED, epochs=1)
    assert not forwards
    # and the cached run is not the online run: the student trains on the cached views
    online = _train(tiny_teacher, tmp_path / "online", epochs=3)
    assert online.history != ref.history


def test_a_feature_preset_stores_the_teacher_embedding(tiny_teacher, tmp_path):
    r = _train(tiny_teacher, tmp_path / "nd", preset="nd", extra=CACHED, epochs=1)
    assert r.history and all(torch.isfinite(torch.tensor(r.history[0]["loss"])).view(-1))
    record = json.loads((tmp_path / "nd" / "teacher_cache.json").read_text())
    assert record["key"]["embed"] is True


def test_a_cache_that_would_not_fit_is_refused_before_it_is_built(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(tc.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 2**20})())
    built = []
    monkeypatch.setattr(tc, "build", lambda *a, **k: built.append(1))
    with pytest.raises(EnvironmentProblem) as info:
        _train(tiny_teacher, tmp_path / "run", extra=CACHED, epochs=1)
    msg = info.value.message
    assert "needs about" in msg and "62 samples x 3 views x 3 of 3 logits" in msg and "10.0 MiB free" in msg
    assert "\n" not in msg and not built
    need = tc.estimate_bytes(62, 3, 3, 3, None)
    assert f"needs about {tc._human(need)}" in msg
    # the estimate: fp16 values (and int16 class ids when top-k) per sample and view
    assert tc.estimate_bytes(50_000, 16, 1000, 20, 512) - 64 * 1024 == 50_000 * 16 * (40 + 40 + 1024)

    r = CliRunner().invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student",
                                 "tinycnn_w8", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "cli"),
                                 "--set", "train.teacher_cache=views", "--set", "train.cache_views=3", "--json"])
    assert r.exit_code == EnvironmentProblem.exit_code, r.output
    assert "kdcompress: error: the teacher-output cache needs about" in r.stderr


def test_the_benchmark_quick_mode_pairs_cached_runs_with_online_ones(tmp_path, capsys):
    import sys as _sys

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    _sys.path.insert(0, str(root))
    try:
        import teacher_cache as bench
    finally:
        _sys.path.pop(0)
    result = bench.main(["--quick", "--work", str(tmp_path), "--json-out", str(tmp_path / "r.json")])
    runs, rows = result["runs"], result["rows"]
    assert [(r["seed"], r["views"]) for r in runs] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    assert all(0 <= r["test_accuracy"] <= 1 and r["step_s"] > 0 for r in runs)
    assert [r["mode"] for r in rows] == ["online", "cached N=2"]
    diffs = [c["test_accuracy"] - o["test_accuracy"] for o, c in zip(runs[::2], runs[1::2], strict=True)]
    assert rows[1]["diff"][0] == pytest.approx(sum(diffs) / 2)
    assert rows[1]["build_s"] > 0 and json.loads((tmp_path / "r.json").read_text())["rows"]
    out = capsys.readouterr().out
    assert "| kd | cached N=2 | 2 |" in out and "smaller" in out
    m, h = bench.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
