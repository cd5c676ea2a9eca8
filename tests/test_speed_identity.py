"""The CPU-throughput rewrites (issue 15) change no result: each is checked bitwise against the formula it
replaced, kept here as the reference, on fixed inputs."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from kdcompress.core.config import load_preset
from kdcompress.core.spec import InputSpec
from kdcompress.core.splits import TensorSplit
from kdcompress.core.types import LossContext, PrepareContext, TeacherOutputs
from kdcompress.losses import memory
from kdcompress.losses.base import Objective
from kdcompress.losses.memory import PAD_SIM, MemoryBank
from kdcompress.students.registry import build_student
from kdcompress.teacher.model import EMBED_TIMM, Teacher
from kdcompress.train.loop import _optimizer
from kdcompress.train.step import Feeder, StepEngine

# ------------------------------------------------------------------------------------------------ IC-KD bank


def reference_class_search(bank: MemoryBank, query, own, y, k, side):
    """class_search as it was before the rewrite: one full (B, w) block per searched class, concatenated."""
    own, y = own.long(), y.long()
    b = query.shape[0]
    cand_s, cand_i = [], []
    for c in (y.unique().tolist() if side == "same" else range(len(bank._sub_banks()))):
        rows = (y == c).nonzero().squeeze(1) if side == "same" else torch.arange(b)
        s, i = bank._search_class(int(c), query[rows] if side == "same" else query, k + (side == "same"))
        full_s = torch.full((b, s.shape[1]), float("-inf"))
        full_i = own.view(-1, 1).expand(b, s.shape[1]).clone()
        full_s[rows], full_i[rows] = s, i
        if side == "other":
            full_s[y == c] = float("-inf")
        cand_s.append(full_s)
        cand_i.append(full_i)
    cand_s.append(torch.full((b, k), float("-inf")))
    cand_i.append(own.view(-1, 1).expand(b, k))
    sims, ids = torch.cat(cand_s, 1), torch.cat(cand_i, 1)
    sims = torch.where(ids == own.view(-1, 1), float("-inf"), sims)
    sims, pos = sims.topk(k, dim=1)
    ids = ids.gather(1, pos)
    pad = torch.isinf(sims)
    return torch.where(pad, own.view(-1, 1), ids), torch.where(pad, PAD_SIM, sims)


def _bank(seed: int, n: int, classes: int, backend: str, small_class: bool) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 16, generator=g)
    emb[1] = emb[0]  # an exact duplicate: a tie
    labels = torch.randint(0, classes, (n,), generator=g)
    if small_class:  # one class with fewer members than k + 1: its rows come up short and are padded
        labels[labels == classes - 1] = 0
        labels[:3] = classes - 1
    return MemoryBank.from_teacher(TeacherOutputs(emb, torch.randn(n, classes, generator=g), labels), backend=backend)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("side", ["same", "other"])
@pytest.mark.parametrize("seed,small_class", [(0, False), (1, True), (2, True)])
def test_class_search_identical_to_the_old_layout(backend, side, seed, small_class):
    if backend == "faiss" and memory._faiss() is None:
        pytest.skip("faiss not installed")
    bank = _bank(seed, 300, 7, backend, small_class)
    g = torch.Generator().manual_seed(100 + seed)
    for b, k in ((64, 8), (5, 4), (1, 8)):
        own = torch.randint(0, len(bank), (b,), generator=g)
        own[0] = 0
        y = bank.labels[own].clone()
        if b > 2:
            y[1] = 9  # a label the bank does not have
        q = bank._as_query(bank.feats[own].float() + 0.1 * torch.randn(b, 16, generator=g))
        q[0] = bank.feats[1].float()  # the duplicate of entry 0
        ids, sims = bank.class_search(q, own, y, k, side)
        ref_ids, ref_sims = reference_class_search(bank, q, own, y, k, side)
        assert torch.equal(ids, ref_ids) and torch.equal(sims, ref_sims), (b, k)


# ------------------------------------------------------------------------------------------------ augmentation


def reference_shift_flip(x, pad, oy, ox, flip):
    """shift_flip as it was: pad, gather the rows, gather the columns, then where(flip, flipped, out)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, c, h, w)
    out = xp.gather(3, cols)
    if flip is not None:
        out = torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)
    return out


@pytest.mark.parametrize("shape,mode", [((64, 1, 28, 28), "shift"), ((16, 3, 32, 32), "crop_flip"),
                                        ((5, 2, 8, 7), "crop_flip"), ((3, 1, 8, 8), "shift"),
                                        ((1, 3, 9, 5), "crop_flip")])
def test_shift_flip_identical_to_the_two_gather_formula(shape, mode):
    from kdcompress.train.augment import augment, augment_view, pad_of, shift_flip, view_draws

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    pad = pad_of(mode)
    oy = torch.randint(0, 2 * pad + 1, (shape[0],), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (shape[0],), generator=g)
    oy[0], ox[0] = 0, 2 * pad  # the extreme offsets
    flip = (torch.rand(shape[0], generator=g) < 0.5) if mode == "crop_flip" else None
    out = shift_flip(x, pad, oy, ox, flip)
    assert out.is_contiguous() and out.shape == x.shape
    assert torch.equal(out, reference_shift_flip(x, pad, oy, ox, flip))
    # the two callers: fresh draws from a generator, and the replayable cached views
    a = augment(x, mode, torch.Generator().manual_seed(7))
    g7 = torch.Generator().manual_seed(7)
    ry, rx = (torch.randint(0, 2 * pad + 1, (shape[0],), generator=g7),
              torch.randint(0, 2 * pad + 1, (shape[0],), generator=g7))
    rf = (torch.rand((shape[0],), generator=g7) < 0.5) if mode == "crop_flip" else None
    assert torch.equal(a, reference_shift_flip(x, pad, ry, rx, rf))
    index = torch.arange(shape[0]) * 3
    vy, vx, vf = view_draws(index, 2, 11, mode)
    assert torch.equal(augment_view(x, index, 2, 11, mode), reference_shift_flip(x, pad, vy, vx, vf))


# ------------------------------------------------------------------------------------------------ optimizer


@pytest.mark.parametrize("opt_kw", [dict(optimizer="sgd"), dict(optimizer="sgd", nesterov=True),
                                    dict(optimizer="sgd", momentum=0.0), dict(optimizer="adamw", lr=1e-3)])
def test_foreach_optimizer_identical_to_the_per_parameter_loop(opt_kw):
    from kdcompress.core.config import TrainConfig

    cfg = TrainConfig(**opt_kw)
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    runs = []
    for make in (lambda ps: _optimizer(cfg, ps), lambda ps: _reference_optimizer(cfg, ps)):
        torch.manual_seed(0)
        model = build_student("tinycnn_w8", 3, spec)
        opt = make(list(model.parameters()))
        g = torch.Generator().manual_seed(1)
        losses = []
        for step in range(12):
            if step == 6:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.1  # the loop's per-epoch schedule
            x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    (la, pa), (lb, pb) = runs
    assert la == lb
    assert all(torch.equal(a, b) for a, b in zip(pa, pb, strict=True))


def _reference_optimizer(cfg, params):
    """The optimizer as it was built before: torch's per-parameter loop on CPU."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, foreach=False)


# ------------------------------------------------------------------------------------------------ a whole step


# Losses of kdcompress's step engine on a fixed-seed short run, printed by the code BEFORE the throughput
# changes (commit e2fed8b). Bitwise equal on the machine that made them; rel 1e-5 leaves room for another
# CPU's convolution kernels.
BEFORE = {
    "kd": ('shift', [0.12466087937355042, 0.1191280260682106, 0.1212935820221901,
                     0.11957225203514099, 0.11303539574146271, 0.10932119935750961]),
    "dkd": ('crop_flip', [1.1023499965667725, 1.102533221244812, 1.1086632013320923,
                          1.156288981437683, 1.138299822807312, 1.074841856956482]),
    "nd": ('shift', [3.1315066814422607, 2.9677443504333496, 3.0289316177368164,
                     3.032848358154297, 2.953340768814087, 2.877936363220215]),
    "ickd": ('crop_flip', [1.146757960319519, 1.1485459804534912, 1.1573724746704102,
                           2.1121606826782227, 2.1099274158477783, 2.0958445072174072]),
}


def _short_run(method: str, aug: str) -> list[float]:
    """6 steps (2 epochs of 3 batches; epoch 1 and 30, inside and past the warm-ups), fixed seeds, CPU."""
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    torch.manual_seed(0)
    t_model = build_student("resnet8", 3, spec).eval()
    student = build_student("tinycnn_w8", 3, spec)
    teacher = Teacher(t_model, "resnet8", ("0", "1", "2"), spec, t_model.embed_dim,
                      sum(p.numel() for p in t_model.parameters()), Path("<memory>"), "0" * 64, embed_via=EMBED_TIMM)
    g = torch.Generator().manual_seed(1)
    split = TensorSplit(torch.rand(48, 1, 8, 8, generator=g), torch.arange(48) % 3)
    preset = load_preset(method)
    if method == "ickd":  # the figures below were printed when ickd shipped lambda_N = 1 (0 since)
        preset = replace(preset, terms=tuple(  # ... and T = 4 (it ships T = 2 since)
            replace(t, weight=1.0 if t.key == "nicd" else t.weight, params={**t.params, "T": 4.0})
            if t.key in ("kd", "picd", "nicd") else t for t in preset.terms))
    obj = Objective(preset.terms, LossContext(3, student.embed_dim, t_model.embed_dim))
    if obj.needs_prepare:
        obj.prepare(PrepareContext(teacher, split, spec, torch.device("cpu"), 3, Console(file=io.StringIO()), 16))
    opt = _optimizer(preset.train, list(student.parameters()) + list(obj.parameters()))
    eng = StepEngine(student=student, objective=obj, opt=opt, teacher=teacher.outputs, spec=spec,
                     device=torch.device("cpu"), aug_mode=aug)
    gen = torch.Generator().manual_seed(2)
    student.train()
    obj.train()
    out = []
    for epoch in (1, 30):
        for b in Feeder(split, torch.device("cpu"), 16, seed=0).epoch(epoch):
            loss, _ = eng.step(b, epoch, gen)
            out.append(float(loss))
    return out


@pytest.mark.parametrize("method", sorted(BEFORE))
def test_short_training_gives_the_losses_of_the_code_before(method):
    aug, expected = BEFORE[method]
    assert _short_run(method, aug) == pytest.approx(expected, rel=1e-5, abs=1e-7)
