"""The IC-KD memory bank and the picd/nicd losses (kdcompress variant): retrieval, masks, sharing, save/load."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from kdcompress.core.config import LossTerm
from kdcompress.core.errors import UsageError
from kdcompress.core.splits import Batch
from kdcompress.core.types import LossContext, ModelOut, PrepareContext, TeacherOutputs
from kdcompress.losses import memory
from kdcompress.losses.base import Objective
from kdcompress.losses.ickd import nicd_loss, picd_loss, positive_target
from kdcompress.losses.kd import kd_loss
from kdcompress.losses.memory import MemoryBank, drop_own

from .helpers import make_ctx, random_outputs

BACKENDS = ["faiss", "torch"]


# ------------------------------------------------------------------------------------------------ retrieval


def test_drop_own_removes_self_by_index_and_keeps_order():
    ids = torch.tensor([[5, 2, 7], [3, 4, 9], [1, 1, 0]])
    sims = torch.tensor([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.5, 0.5, 0.4]])
    kid, ksim = drop_own(ids, sims, torch.tensor([2, 8, 0]), 2)
    # row 0: own (2) dropped; row 1: own not retrieved, the worst is cut; row 2: own last
    assert kid.tolist() == [[5, 7], [3, 4], [1, 1]]
    torch.testing.assert_close(ksim, torch.tensor([[0.9, 0.7], [0.9, 0.8], [0.5, 0.5]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_retrieval_never_returns_own_index(backend):
    out = random_outputs(n=50)
    emb = out.embed.clone()
    emb[1] = emb[0]  # an exact duplicate scores like self: it must be kept, self must not
    bank = MemoryBank.from_teacher(TeacherOutputs(emb, out.logits, out.labels), backend=backend)
    own = torch.arange(50)
    ids, _ = bank.neighbours(emb, own, 8)
    assert ids.shape == (50, 8)
    assert not (ids == own[:, None]).any()
    assert ids[0, 0] == 1 and ids[1, 0] == 0
    assert all(len(set(r)) == 8 for r in ids.tolist())
    # queries unrelated to the bank, where self is usually not among the top K+1
    q = torch.randn(50, 16, generator=torch.Generator().manual_seed(3))
    ids, _ = bank.neighbours(q, own, 8)
    assert not (ids == own[:, None]).any() and ids.shape == (50, 8)
    ids, _ = bank.static_neighbours(8)
    assert not (ids == own[:, None]).any()


def test_faiss_ids_equal_torch_mm_topk(monkeypatch):
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(500, 32, generator=g), dim=1)
    out = TeacherOutputs(feats, torch.randn(500, 5, generator=g), torch.arange(500) % 5)
    q = F.normalize(torch.randn(40, 32, generator=g), dim=1)
    fa = MemoryBank.from_teacher(out, backend="faiss")
    to = MemoryBank.from_teacher(out, backend="torch")
    s_f, i_f = fa.search(q, 10)
    s_t, i_t = to.search(q, 10)
    ref = (q @ fa.feats.float().T).topk(10, dim=1)
    assert torch.equal(i_f, i_t) and torch.equal(i_t, ref.indices)
    torch.testing.assert_close(s_f, s_t, rtol=0, atol=1e-5)
    # the chunked path (bank larger than one chunk) merges to the same answer
    monkeypatch.setattr(memory, "_TORCH_CHUNK_ROWS", 64)
    s_c, i_c = to.search(q, 10)
    assert torch.equal(i_c, i_t)
    torch.testing.assert_close(s_c, s_t)


def test_faiss_blas_threshold_is_lowered_for_the_search_and_restored(monkeypatch):
    import faiss

    bank = MemoryBank.from_teacher(random_outputs(), backend="faiss")
    seen = []
    real = type(bank._index).search
    monkeypatch.setattr(type(bank._index), "search",
                        lambda self, q, k: seen.append(faiss.cvar.distance_compute_blas_threshold) or real(self, q, k))
    before = faiss.cvar.distance_compute_blas_threshold
    bank.search(torch.randn(4, bank.dim), 3)
    assert seen == [memory.FAISS_BLAS_THRESHOLD] == [20]  # BLAS path for batched queries during the search
    assert faiss.cvar.distance_compute_blas_threshold == before  # the process-wide setting comes back


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_and_dynamic_agree_without_augmentation(backend):
    out = random_outputs(n=70, d=12)
    bank = MemoryBank.from_teacher(out, backend=backend)
    s_ids, s_sims = bank.static_neighbours(6)
    for start in range(0, 70, 32):  # dynamic queries come in training-sized batches, in any order
        idx = torch.randperm(70, generator=torch.Generator().manual_seed(start))[:32]
        d_ids, d_sims = bank.neighbours(out.embed[idx], idx, 6)
        assert torch.equal(d_ids, s_ids[idx])
        torch.testing.assert_close(d_sims, s_sims[idx], rtol=0, atol=1e-6)
        l_ids, _ = bank.static_lookup(idx, 6)
        assert torch.equal(l_ids, d_ids)


def test_bank_is_fp16_unit_length_with_fp32_logits():
    out = random_outputs()
    bank = MemoryBank.from_teacher(out)
    assert bank.feats.dtype == torch.float16 and bank.logits.dtype == torch.float32
    torch.testing.assert_close(bank.feats.float().norm(dim=1), torch.ones(60), rtol=0, atol=2e-3)
    assert torch.equal(bank.logits, out.logits) and torch.equal(bank.labels, out.labels)


def test_memo_serves_a_smaller_k_without_searching():
    out = random_outputs()
    bank = MemoryBank.from_teacher(out)
    q, own = out.embed[:10], torch.arange(10)
    ids8, _ = bank.neighbours(q, own, 8)
    ids4, _ = bank.neighbours(q, own, 4)
    assert bank.searches == 1 and torch.equal(ids4, ids8[:, :4])
    bank.neighbours(q.clone(), own, 4)  # a new query tensor searches again
    assert bank.searches == 2


def test_state_roundtrip_keeps_results_and_static_tables():
    out = random_outputs(n=50)
    bank = MemoryBank.from_teacher(out)
    ids, sims = bank.static_neighbours(5)
    buf = io.BytesIO()
    torch.save(bank.state(static_ks=(5,)), buf)
    buf.seek(0)
    loaded = MemoryBank.from_state(torch.load(buf, weights_only=True))
    l_ids, l_sims = loaded.static_neighbours(5)
    assert loaded.searches == 0  # the table came from the file, not from a new search
    assert torch.equal(l_ids, ids) and torch.equal(l_sims, sims)
    assert torch.equal(loaded.feats, bank.feats)


# ------------------------------------------------------------------------------------------------ loss maths


def test_picd_target_is_class_mean_logit_excluding_self():
    out = random_outputs(n=30, d=8, c=3)
    bank = MemoryBank.from_teacher(out)
    own = torch.arange(30)
    ids, sims = bank.neighbours(out.embed, own, 29)  # K = N - 1 >= every class's size: all others retrieved
    pos = bank.labels[ids] == out.labels[:, None]
    zbar, valid = positive_target(bank.logits[ids], pos)
    assert valid.all()
    for b in range(30):
        same = (out.labels == out.labels[b]) & (own != b)
        torch.testing.assert_close(zbar[b], out.logits[same].mean(0), rtol=0, atol=1e-5)


def test_picd_hand_values():
    z_s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    nb = torch.tensor([[[math.log(3), 0.0], [5.0, 5.0]], [[2.0, 0.0], [0.0, 2.0]]])
    pos = torch.tensor([[True, False], [False, False]])
    # sample 0: one positive [ln 3, 0] vs [0, 0] at T=1 is methods.md §12's 0.1308120; sample 1 is masked
    assert float(picd_loss(z_s, nb, pos, T=1.0)) == pytest.approx(0.1308120, abs=1e-6)
    # two positives, mean weighting: the target is their mean logit
    pos2 = torch.tensor([[True, True], [True, True]])
    zbar = nb.mean(1)
    assert float(picd_loss(z_s, nb, pos2, T=4.0)) == pytest.approx(float(kd_loss(z_s, zbar, 4.0)), abs=1e-6)
    # similarity weighting: softmax(sim / 0.1); sims 0.9 and 0.8 give weights e/(e+1) and 1/(e+1)
    sims = torch.tensor([[0.9, 0.8], [0.9, 0.8]])
    w = math.e / (math.e + 1)
    zw = w * nb[:, 0] + (1 - w) * nb[:, 1]
    got = picd_loss(z_s, nb, pos2, T=2.0, sims=sims, weighting="similarity")
    assert float(got) == pytest.approx(float(kd_loss(z_s, zw, 2.0)), abs=1e-6)


def test_nicd_hand_value():
    # p_s = [.5, .5], p_n = [.75, .25]: cos = 0.5 / (sqrt(.5) sqrt(.625)) = 2 / sqrt(5)
    z_s = torch.zeros(1, 2)
    nb = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    neg = torch.tensor([[True, False]])
    assert float(nicd_loss(z_s, nb, neg, T=1.0)) == pytest.approx(2 / math.sqrt(5), abs=1e-6)
    # two negatives: the mean of their cosines (the second is identical to p_s: cos 1)
    both = torch.tensor([[True, True]])
    assert float(nicd_loss(z_s, nb, both, T=1.0)) == pytest.approx((2 / math.sqrt(5) + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("which", ["picd", "nicd"])
def test_all_masked_gives_zero_and_finite_grads(which):
    z_s = torch.tensor([[1e4, -1e4, 0.0], [2.0, 1.0, 0.0]], requires_grad=True)
    nb = torch.randn(2, 4, 3)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    if which == "picd":
        value = picd_loss(z_s, nb, mask, T=4.0, sims=torch.rand(2, 4), weighting="similarity")
    else:
        value = nicd_loss(z_s, nb, mask, T=4.0)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(z_s.grad).all() and float(z_s.grad.abs().sum()) == 0.0


def test_partial_mask_averages_over_valid_samples_only():
    z_s = torch.randn(3, 4, requires_grad=True)
    nb = torch.randn(3, 2, 4)
    pos = torch.tensor([[True, False], [False, False], [True, True]])
    full = picd_loss(z_s, nb, pos, T=2.0)
    rows = [picd_loss(z_s[i:i + 1], nb[i:i + 1], pos[i:i + 1], T=2.0) for i in (0, 2)]
    assert full.item() == pytest.approx(sum(r.item() for r in rows) / 2, abs=1e-6)
    full.backward()
    assert torch.isfinite(z_s.grad).all() and float(z_s.grad[1].abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------------ the terms


def ickd_terms(w_p: float = 1.0, w_n: float = 1.0, mode: str = "dynamic", k: int = 5,
               retrieval: str = "class") -> tuple[LossTerm, ...]:
    p = {"k": k, "mode": mode, "retrieval": retrieval}
    return (LossTerm("ce"), LossTerm("kd", params={"T": 4.0}), LossTerm("picd", w_p, params=p),
            LossTerm("nicd", w_n, params=p))


def step_inputs(ctx: PrepareContext, idx: torch.Tensor) -> tuple[ModelOut, ModelOut, Batch]:
    from kdcompress.core.splits import normalize

    x = ctx.train_split.x[idx]
    with torch.no_grad():
        t = ctx.teacher.outputs(normalize(x, ctx.spec), want_embed=True)
        zt, ft = t.logits, t.embed
    g = torch.Generator().manual_seed(int(idx[0]))
    s = ModelOut(torch.randn(len(idx), ctx.num_classes, generator=g, requires_grad=True))
    return s, ModelOut(zt, ft), Batch(x, ctx.train_split.y[idx], idx)


@pytest.mark.parametrize("retrieval", ["joint", "class"])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_picd_and_nicd_share_one_bank_and_one_search(monkeypatch, mode, retrieval):
    calls = []
    orig = PrepareContext._teacher_pass
    monkeypatch.setattr(PrepareContext, "_teacher_pass", lambda self: calls.append(1) or orig(self))
    ctx = make_ctx()
    obj = Objective(ickd_terms(mode=mode, retrieval=retrieval), LossContext(3, 16, 16))
    obj.prepare(ctx)
    picd, nicd = obj.losses["picd"], obj.losses["nicd"]
    assert len(calls) == 1 and picd.retrieval.bank is nicd.retrieval.bank
    bank = picd.retrieval.bank
    # static retrieval only gathers by dataset index: it needs no teacher feature at step time
    assert ("teacher_embed" in picd.NEEDS | nicd.NEEDS) == (mode == "dynamic")
    before = bank.searches
    obj(*step_inputs(ctx, torch.arange(8, 24)), epoch=1)
    # joint: the two terms share one search through the memo; class: one per side (same / other)
    assert bank.searches - before == (0 if mode == "static" else 1 if retrieval == "joint" else 2)
    # saved once: the two terms' states hold the same tensors, so the file is about one bank
    buf_both, buf_one = io.BytesIO(), io.BytesIO()
    torch.save(obj.prepared_state(), buf_both)
    torch.save({"picd": picd.prepared_state()}, buf_one)
    assert len(buf_both.getvalue()) < 1.1 * len(buf_one.getvalue())


def test_prepared_state_roundtrip_through_a_new_objective():
    ctx = make_ctx()
    a = Objective(ickd_terms(mode="static"), LossContext(3, 16, 16))
    a.prepare(ctx)
    buf = io.BytesIO()
    torch.save(a.prepared_state(), buf)
    buf.seek(0)
    b = Objective(ickd_terms(mode="static"), LossContext(3, 16, 16))
    ctx2 = make_ctx()
    b.load_prepared(torch.load(buf, weights_only=True), ctx2)
    assert "teacher_outputs" not in ctx2._cache  # no teacher pass on load
    bank = b.losses["picd"].retrieval.bank
    assert bank is b.losses["nicd"].retrieval.bank and bank.searches == 0
    inputs = step_inputs(ctx, torch.arange(16))
    ta, pa = a(*inputs, epoch=3)
    tb, pb = b(*inputs, epoch=3)
    assert torch.equal(ta, tb) and pa == pb


def test_zero_ickd_weights_equal_the_base_loss_bit_for_bit():
    ctx = make_ctx()
    full = Objective(ickd_terms(0.0, 0.0), LossContext(3, 16, 16))
    full.prepare(ctx)
    base = Objective((LossTerm("ce"), LossTerm("kd", params={"T": 4.0})), LossContext(3, 16, 16))
    inputs = step_inputs(ctx, torch.arange(4, 20))
    t_full, parts = full(*inputs, epoch=1)
    t_base, _ = base(*inputs, epoch=1)
    assert torch.equal(t_full, t_base)
    assert parts["picd"] > 0.0  # the terms were computed, only weighted by 0


def test_k_larger_than_the_split_is_a_usage_error():
    obj = Objective((LossTerm("picd", params={"k": 40}),), LossContext(3, 16, 16))
    with pytest.raises(UsageError, match=r"picd.k=40 needs at least 41 training samples; the training split has 40"):
        obj.prepare(make_ctx(n=40))


@pytest.mark.parametrize("bad, needle", [({"mode": "stat"}, "mode must be one of"), ({"k": 0}, "k must be >= 1"),
                                         ({"weighting": "max"}, "weighting must be one of")])
def test_bad_params_are_usage_errors(bad, needle):
    from kdcompress.core.config import preset_from_dict
    from kdcompress.losses import check_terms

    with pytest.raises(UsageError, match=needle):
        check_terms(preset_from_dict({"loss": [{"kind": "picd", "params": bad}]}))


# ------------------------------------------------------------------------------------------------ class-conditional


def _brute_class(out, own: int, k: int, side: str) -> list[int]:
    """The k nearest ids with (side same) or without (side other) own's label, own excluded, by fp16 cosine."""
    f = F.normalize(out.embed.float(), dim=1).half().float()
    sims = f @ f[own]
    same = out.labels == out.labels[own]
    keep = (same if side == "same" else ~same) & (torch.arange(len(f)) != own)
    cand = keep.nonzero().squeeze(1)
    order = torch.argsort(sims[cand], descending=True, stable=True)
    return cand[order][:k].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["same", "other"])
def test_class_search_equals_brute_force_per_class(backend, side):
    out = random_outputs(n=60, d=12, c=3)
    bank = MemoryBank.from_teacher(out, backend=backend)
    own = torch.arange(60)
    ids, sims = bank.neighbours(out.embed, own, 5, out.labels, side)
    assert ids.shape == (60, 5) and not (ids == own[:, None]).any()
    same = bank.labels[ids] == out.labels[:, None]
    assert bool(same.all()) if side == "same" else not bool(same.any())
    for b in range(60):
        assert set(ids[b].tolist()) == set(_brute_class(out, b, 5, side))
    assert (sims[:, :-1] >= sims[:, 1:] - 1e-6).all()  # best first
    s_ids, _ = bank.static_neighbours(5, side)  # static tables agree with un-augmented dynamic queries
    assert torch.equal(s_ids, ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_classes_are_padded_with_own_index_and_masked(backend):
    # class 1 has only 3 members: at most 2 positives each, padding = own index at PAD_SIM
    labels = torch.tensor([0] * 20 + [1] * 3)
    out = random_outputs(n=23, d=8, c=2)
    out = TeacherOutputs(out.embed, out.logits, labels)
    bank = MemoryBank.from_teacher(out, backend=backend)
    own = torch.arange(23)
    ids, sims = bank.neighbours(out.embed, own, 4, labels, "same")
    for b in range(20, 23):
        assert (ids[b] != b).sum() == 2 and (ids[b, 2:] == b).all()
        assert (sims[b, 2:] == memory.PAD_SIM).all()


def test_class_retrieval_gives_every_sample_negatives_where_joint_gives_few():
    """Well-separated classes (an accurate teacher): the joint top-K is almost all same-class, so NICD has
    nothing to act on; class-conditional retrieval has K negatives for every sample."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    centres = torch.eye(3, 16) * 10
    emb = centres[labels] + 0.3 * torch.randn(90, 16, generator=g)
    out = TeacherOutputs(emb, torch.randn(90, 3, generator=g), labels)
    ctx = make_ctx()
    fractions = {}
    for retrieval in ("joint", "class"):
        obj = Objective((LossTerm("nicd", params={"k": 5, "retrieval": retrieval}),), LossContext(3, 16, 16))
        loss = obj.losses["nicd"]
        loss.retrieval.bank = MemoryBank.from_teacher(out)
        s = ModelOut(torch.randn(90, 3, generator=g))
        _, parts = obj(s, ModelOut(out.logits, emb), Batch(torch.zeros(90, 1, 8, 8), labels, torch.arange(90)), epoch=1)
        fractions[retrieval] = parts["nicd.valid"]
    assert fractions["joint"] == 0.0 and fractions["class"] == 1.0
    del ctx


def test_standardized_picd_nicd_ignore_student_shift_and_scale():
    g = torch.Generator().manual_seed(2)
    z_s = torch.randn(4, 5, generator=g, dtype=torch.float64)
    nb = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True]] * 4)
    moved = 3.0 * z_s + 7.0
    for f in (lambda z: picd_loss(z, nb, mask, 2.0, standardize=True),
              lambda z: nicd_loss(z, nb, mask, 2.0, standardize=True)):
        assert float(f(moved)) == pytest.approx(float(f(z_s)), rel=1e-6)
