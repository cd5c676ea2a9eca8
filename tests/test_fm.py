"""Function matching (`fm`, Beyer et al. CVPR 2022) and mixing (`train.mix`): teacher and student get the same
mixed tensor online; a mixed teacher-output cache replays, bit for bit and in any batch order, the view the
teacher's outputs were computed on (partner image, crops and lambda are pure functions of seed, sample and view);
the cache key separates mixed from unmixed views; label terms and streamed files are refused in one line before
anything is written; the preset loads and trains through the CLI on the digits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.config import TrainConfig
from kdcompress.core.errors import Interrupted, UsageError
from kdcompress.core.runio import RunDir, safe_torch_load
from kdcompress.core.spec import InputSpec
from kdcompress.core.splits import Batch, TensorSplit, normalize
from kdcompress.core.types import LossContext, ModelOut
from kdcompress.data.imagesplits import array_split
from kdcompress.data.specs import load_data
from kdcompress.losses import load_checked_preset
from kdcompress.losses.base import Objective
from kdcompress.students import build_student
from kdcompress.teacher.formats import load_teacher
from kdcompress.train import teacher_cache as tc
from kdcompress.train.augment import augment, augment_view, blend, mix_uniforms, partner_of, view_draws
from kdcompress.train.loop import _optimizer, train
from kdcompress.train.step import Feeder, StepEngine

from .conftest import TINY_DATA
from .helpers import sigterm_at_step, train_factories

runner = CliRunner()
SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))


class Spy:
    """Records every input tensor a module (or the teacher function) is called with."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def hook(self, module, args) -> None:
        self.seen.append(args[0].detach().clone())


def _engine(mixing: str, aug: str, teacher_fn, cache=None, take=None, spec=SPEC, classes=3):
    torch.manual_seed(0)
    student = build_student("tinycnn_w8", classes, spec)
    preset = load_checked_preset("fm", [f"train.mix={mixing}"])
    obj = Objective(preset.terms, LossContext(classes))
    opt = _optimizer(preset.train, list(student.parameters()))
    spy = Spy()
    student.register_forward_pre_hook(spy.hook)
    eng = StepEngine(student=student, objective=obj, opt=opt, teacher=teacher_fn, spec=spec,
                     device=torch.device("cpu"), aug_mode=aug, cache=cache, mixing=mixing, take=take)
    return eng, spy


# ----------------------------------------------------------------------------------------------- (a) online


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_online_teacher_and_student_get_the_same_mixed_tensor(mixing):
    torch.manual_seed(3)
    t_model = build_student("resnet8", 3, SPEC).eval()
    t_spy = Spy()

    def teacher_fn(x, want_embed):
        t_spy.seen.append(x.detach().clone())
        return ModelOut(t_model(x))

    eng, s_spy = _engine(mixing, "shift", teacher_fn)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = Batch(x, torch.arange(8) % 3, torch.arange(8))
    eng.step(batch, 1, torch.Generator().manual_seed(5))
    assert len(t_spy.seen) == len(s_spy.seen) == 1
    assert torch.equal(t_spy.seen[0], s_spy.seen[0])  # the very same tensor: consistent teaching
    # ... and it is the mixed view: the crop and the mix drawn from the step's generator, in that order
    want = normalize(augment(x, "shift", torch.Generator().manual_seed(5), mixing), SPEC)
    assert torch.equal(s_spy.seen[0], want)
    unmixed = normalize(augment(x, "shift", torch.Generator().manual_seed(5)), SPEC)
    assert not torch.equal(want, unmixed)


def test_blend_mixup_and_cutmix_by_hand():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    u = torch.tensor([[0.25, 0.0, 0.0], [0.75, 0.6, 0.6]])
    m = blend(a, b, u, "mixup")
    assert torch.equal(m[0], torch.full((1, 4, 4), 0.75)) and torch.equal(m[1], torch.full((1, 4, 4), 0.25))
    c = blend(a, b, u, "cutmix")
    # sample 0: side round(sqrt(0.75) * 4) = 3 centred at pixel (0, 0): rows/cols [-1, 2) clipped to [0, 2)
    assert c[0, 0].sum() == 4 and torch.equal(c[0, 0, :2, :2], torch.ones(2, 2))
    # sample 1: side round(sqrt(0.25) * 4) = 2 centred at pixel (2, 2): rows/cols [1, 3)
    assert c[1, 0].sum() == 4 and torch.equal(c[1, 0, 1:3, 1:3], torch.ones(2, 2))
    assert set(c.unique().tolist()) == {0.0, 1.0}  # pasted, not blended


def test_a_mixed_batch_with_a_label_term_is_refused_and_the_override_can_fix_it(tmp_path):
    with pytest.raises(UsageError, match=r"train.mix=mixup .* term\(s\) ce that use the labels; .*--preset fm"):
        load_checked_preset("kd", ["train.mix=mixup"])
    with pytest.raises(UsageError, match=r"term\(s\) ce, dkd"):
        load_checked_preset("dkd", ["train.mix=cutmix"])
    with pytest.raises(UsageError, match=r"train.mix='blend' must be none, mixup or cutmix"):
        TrainConfig(mix="blend")
    # a user preset that mixes with CE is valid once --set turns the mixing off
    own = tmp_path / "own.toml"
    own.write_text('[train]\nmix = "mixup"\n[[loss]]\nkind = "ce"\n[[loss]]\nkind = "kd"\n')
    with pytest.raises(UsageError, match="term\\(s\\) ce"):
        load_checked_preset(str(own))
    assert load_checked_preset(str(own), ["train.mix=none"]).train.mix == "none"


# ----------------------------------------------------------------------------------------------- (e) draws


def test_mixing_draws_are_pure_functions_of_seed_sample_and_view():
    idx = torch.tensor([5, 9, 2, 7, 0, 3, 11, 4])
    n = 12
    p1, p2 = partner_of(idx, 2, 7, n), partner_of(idx, 2, 7, n)
    u1, u2 = mix_uniforms(idx, 2, 7), mix_uniforms(idx, 2, 7)
    assert torch.equal(p1, p2) and torch.equal(u1, u2)  # repeated calls
    perm = torch.tensor([3, 0, 5, 1, 7, 4, 2, 6])
    assert torch.equal(partner_of(idx[perm], 2, 7, n), p1[perm])  # per sample, whatever the batch order
    assert torch.equal(mix_uniforms(idx[perm], 2, 7), u1[perm])
    assert u1.dtype == torch.float32 and bool((u1 >= 0).all() and (u1 < 1).all())
    assert not torch.equal(u1, mix_uniforms(idx, 3, 7)) and not torch.equal(u1, mix_uniforms(idx, 2, 8))
    # the partner is any other sample, never the sample itself, and covers the split
    every = torch.arange(n).repeat(200)
    views = torch.arange(len(every)) // n
    part = partner_of(every, views, 7, n)
    assert not bool((part == every).any()) and set(part.tolist()) == set(range(n))
    # the partner's crop is its own draw, not a copy of the sample's
    own, theirs = view_draws(every, views, 7, "crop_flip"), view_draws(every, views, 7, "crop_flip", stream=1)
    assert not torch.equal(own[0], theirs[0])
    # the whole mixed view, twice and in another batch order
    x, px = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8)
    for mixing in ("mixup", "cutmix"):
        a = augment_view(x, idx, 2, 7, "crop_flip", mixing, px)
        assert torch.equal(a, augment_view(x, idx, 2, 7, "crop_flip", mixing, px))
        assert torch.equal(augment_view(x[perm], idx[perm], 2, 7, "crop_flip", mixing, px[perm]), a[perm])
        assert not torch.equal(a, augment_view(x, idx, 2, 7, "crop_flip"))


def test_in_memory_splits_give_images_by_index():
    src = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8)
    s = array_split(src, torch.arange(10) % 2, (1, 8, 8), in_memory=False)
    b = next(s.batches(10))
    idx = torch.tensor([7, 1, 7, 4])
    assert torch.equal(s.take(idx), b.x[idx])  # converted exactly as batches converts them
    t = TensorSplit(torch.rand(5, 1, 4, 4), torch.arange(5))
    assert torch.equal(t.take(torch.tensor([4, 0])), t.x[[4, 0]])


# ----------------------------------------------------------------------------------------------- (b, c) cache


def _build(teacher, splits, mixing, views=2, calls=None):
    key = tc.cache_key(teacher_sha256=teacher.sha256, data=TINY_DATA, split=splits.train, spec=teacher.input_spec,
                       mode="crop_flip", views=views, seed=4, k=3, num_classes=3, embed=False, mixing=mixing)

    def fn(x, want_embed):
        if calls is not None:
            calls.append(len(x))
        return teacher.outputs(x, want_embed)

    return key, tc.load_or_build(fn, key=key, split=splits.train, spec=teacher.input_spec, device=torch.device("cpu"),
                                 embed_dim=None, batch_size=16, amp=False, console=Console(file=io.StringIO()),
                                 record=None)


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_the_cached_mixed_view_is_the_one_the_teacher_saw(tiny_teacher, mixing):
    teacher = load_teacher(tiny_teacher)
    splits = load_data(TINY_DATA, teacher.input_spec)
    _, cache = _build(teacher, splits, mixing)
    n = len(splits.train)
    feeder = Feeder(splits.train, torch.device("cpu"), 16, seed=9)
    ran = []
    eng, spy = _engine(mixing, "crop_flip", lambda x, e: ran.append(1), cache=cache, take=feeder.take,
                       spec=teacher.input_spec)
    for epoch in (1, 2):  # two different shuffles of the split, two different choices of view slot
        for b in feeder.epoch(epoch):
            eng.step(b, epoch, None)
            x = spy.seen.pop()
            view = cache.epoch_views(b.index, epoch)
            partners = partner_of(b.index, view, 4, n)
            assert not bool((partners == b.index).any())
            # bit for bit the view the build pass computed (augment_view over the split's own images) ...
            built = normalize(augment_view(b.x, b.index, view, 4, "crop_flip", mixing,
                                           splits.train.take(partners)), teacher.input_spec)
            assert torch.equal(x, built)
            # ... and the cached outputs are the teacher's on exactly this tensor (stored in fp16)
            with torch.inference_mode():
                again = teacher.outputs(x).logits
            assert torch.equal(cache.lookup(b.index, view).logits, again.half().float())
            assert not torch.equal(x, normalize(augment_view(b.x, b.index, view, 4, "crop_flip"), teacher.input_spec))
    assert not ran  # no teacher forward in a cached step


def test_the_cache_key_separates_mixed_from_unmixed_views(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    splits = load_data(TINY_DATA, teacher.input_spec)
    calls: list[int] = []
    plain_key, plain = _build(teacher, splits, "none", calls=calls)
    assert sum(calls) == 2 * len(splits.train)
    mixed_key, mixed = _build(teacher, splits, "mixup", calls=calls)
    assert sum(calls) == 4 * len(splits.train)  # not read from the unmixed cache: built anew
    assert plain_key["mix"] == "none" and mixed_key["mix"] == "mixup"
    assert tc.key_digest(plain_key) != tc.key_digest(mixed_key)
    assert tc.key_digest(mixed_key) != tc.key_digest(_build(teacher, splits, "cutmix", calls=calls)[0])
    assert not torch.equal(plain.values, mixed.values)
    _build(teacher, splits, "mixup", calls=calls)
    assert sum(calls) == 6 * len(splits.train)  # the mixed one, asked again, is read (only cutmix was built)


# ----------------------------------------------------------------------------------------------- refusals (CLI)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("kdcompress: error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_refuses_mixing_with_a_label_term_before_any_file(tiny_teacher, tmp_path):
    before = _snapshot(tmp_path)
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--preset", "kd", "--set", "train.mix=mixup", "--epochs", "1", "--device", "cpu",
                            "--out", str(tmp_path / "run")])
    _one_error_line(r, UsageError.exit_code, "train.mix=mixup", "ce", "--preset fm", "--set train.mix=none")
    assert _snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_cli_refuses_a_mixed_cache_over_streamed_files_before_any_file(tiny_teacher, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("class_0", "class_1", "class_2"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    before = _snapshot(tmp_path)
    args = ["distill", "--teacher", str(tiny_teacher), "--student", "tinycnn_w8", "--preset", "fm", "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--set", "train.teacher_cache=views"]
    r = runner.invoke(app, [*args, "--data", f"imagefolder:{tmp_path / 'imgs'},load=stream"])
    _one_error_line(r, UsageError.exit_code, "train.mix=mixup", "train.teacher_cache=views", ",load=memory",
                    "train.teacher_cache=off")
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "run" / "config.json").exists()
    # train() called directly meets the same refusal when the cache is built, before any step
    teacher = load_teacher(tiny_teacher)
    splits = load_data(f"imagefolder:{tmp_path / 'imgs'},load=stream", teacher.input_spec)
    preset = load_checked_preset("fm", ["train.epochs=1", "train.teacher_cache=views"])
    with pytest.raises(UsageError, match=r"load=memory"):
        train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=preset, teacher=teacher,
              run=RunDir(tmp_path / "api"), device=torch.device("cpu"), fingerprint={"data": "imgs"},
              console=Console(file=io.StringIO()),
              **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, preset))
    assert not (tmp_path / "api" / "checkpoints" / "last.pt").exists()
    # held in memory, the same data is mixed and cached
    splits = load_data(f"imagefolder:{tmp_path / 'imgs'},load=memory", teacher.input_spec)
    result = train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=preset, teacher=teacher,
                   run=RunDir(tmp_path / "mem"), device=torch.device("cpu"), fingerprint={"data": "imgs-mem"},
                   console=Console(file=io.StringIO()),
                   **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, preset))
    assert (result.epochs == 1
            and json.loads((tmp_path / "mem" / "teacher_cache.json").read_text())["key"]["mix"] == "mixup")


# ----------------------------------------------------------------------------------------------- (d) preset


def test_fm_preset_is_kd_alone_at_t1_on_mixed_views():
    p = load_checked_preset("fm")
    assert p.source == "builtin:fm" and p.needs_teacher
    assert [(t.kind, t.weight, t.params) for t in p.terms] == [("kd", 1.0, {"T": 1.0})]
    assert p.train.mix == "mixup" and p.train.optimizer == "adamw" and p.train.schedule == "cosine"
    assert p.train.teacher_cache == "off" and p.train.epochs == 1000
    assert ("arXiv:2106.05237" in p.reference and "From the paper:" in p.reference
            and "Ours (kdcompress):" in p.reference)
    assert p.description and p.variant is False
    # KD at T = 1 is the plain batch-mean KL(teacher || student): nothing else enters the objective
    obj = Objective(p.terms, LossContext(4))
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    total, parts = obj(ModelOut(z_s), ModelOut(z_t), None, epoch=1)
    pt = torch.softmax(z_t, 1)
    kl = (pt * (torch.log_softmax(z_t, 1) - torch.log_softmax(z_s, 1))).sum(1).mean()
    assert float(total) == pytest.approx(float(kl), rel=1e-6) and set(parts) == {"kd"}
    assert load_checked_preset("fm", ["train.mix=cutmix"]).train.mix == "cutmix"


def test_an_interrupted_online_fm_run_resumes_to_the_same_weights(tiny_teacher, tmp_path, monkeypatch):
    """The online mix draws (permutation, lambda) come from the step's checkpointed generator, so a run
    stopped mid-epoch ends with the weights of one that was not."""
    teacher = load_teacher(tiny_teacher)
    splits = load_data(TINY_DATA, teacher.input_spec)
    preset = load_checked_preset("fm", ["train.epochs=2", "train.batch_size=16", "train.augment=crop_flip"])

    def run(out: Path):
        return train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=preset, teacher=teacher,
                     run=RunDir(out), device=torch.device("cpu"), fingerprint={"p": "fm"},
                     console=Console(file=io.StringIO()),
                     **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, preset))

    ref = run(tmp_path / "ref")
    orig = sigterm_at_step(monkeypatch, epoch=2, step=2)
    with pytest.raises(Interrupted):
        run(tmp_path / "run")
    monkeypatch.setattr(StepEngine, "step", orig)
    got = run(tmp_path / "run")
    a = safe_torch_load(tmp_path / "run" / "student.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "ref" / "student.pt")["state_dict"]
    assert (got.resumed_from_epoch, got.resumed_from_step) == (2, 2) and all(torch.equal(a[k], b[k]) for k in a)
    # and mixing changed the training: the unmixed run ends elsewhere
    plain = load_checked_preset("fm", ["train.epochs=2", "train.batch_size=16", "train.augment=crop_flip",
                                       "train.mix=none"])
    other = train(arch="tinycnn_w8", splits=splits, spec=teacher.input_spec, preset=plain, teacher=teacher,
                  run=RunDir(tmp_path / "plain"), device=torch.device("cpu"), fingerprint={"p": "fm-none"},
                  console=Console(file=io.StringIO()),
                  **train_factories("tinycnn_w8", splits.num_classes, teacher.input_spec, plain))
    assert other.history[-1]["kd"] != ref.history[-1]["kd"]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    """A tinycnn_w16 teacher trained for 2 epochs on the digits (far above chance, seconds)."""
    from kdcompress.pipeline import train_teacher

    out = tmp_path_factory.mktemp("digits") / "teacher.pt"
    preset = load_checked_preset("ce", ["train.epochs=2", "train.batch_size=32", "train.optimizer=adamw",
                                        "train.lr=0.01"])
    train_teacher(data="digits", arch="tinycnn_w16", preset=preset, out=out, device="cpu",
                  console=Console(stderr=True, quiet=True))
    return out


@pytest.mark.parametrize("cached", [False, True])
def test_cli_distills_the_digits_with_fm(digits_teacher, tmp_path, cached):
    extra = ["--set", "train.teacher_cache=views", "--set", "train.cache_views=2"] if cached else []
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(digits_teacher), "--data", "digits", "--student", "tinycnn_w8",
                            "--preset", "fm", "--epochs", "2", "--device", "cpu", "--out", str(out), "--json", *extra],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["preset"]["name"] == "fm"
    hist = report["training"]["history"]
    assert len(hist) == 2 and all(set(h) >= {"loss", "kd", "val_accuracy"} and "ce" not in h for h in hist)
    assert all(h["loss"] == pytest.approx(h["kd"]) and h["kd"] > 0 for h in hist)
    assert (out / "student.onnx").is_file()
    if cached:
        record = json.loads((out / "teacher_cache.json").read_text())
        assert record["key"]["mix"] == "mixup" and record["key"]["augment"] == "shift"
