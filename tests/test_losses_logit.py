"""Logit-only losses (kd, dkd, gdkd, dist, nkd, bickd): the reference vectors and identities of
methods.md §12, numerical robustness (§11) and the contract (Params validation, parts)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdcompress.core.build import build_dataclass
from kdcompress.core.errors import UsageError
from kdcompress.core.splits import Batch
from kdcompress.core.types import LossContext, ModelOut
from kdcompress.losses.base import LOSSES
from kdcompress.losses.bickd import bickd_terms
from kdcompress.losses.dist import dist_terms, pearson
from kdcompress.losses.dkd import dkd_loss, dkd_terms
from kdcompress.losses.gdkd import gdkd_terms, topk_mask
from kdcompress.losses.kd import kd_loss
from kdcompress.losses.nkd import nkd_terms

D64 = torch.float64
NEW = ("dkd", "gdkd", "dist", "nkd", "bickd")


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=D64)


def kl_full(z_s, z_t, T=1.0):
    """Per-sample KL(softmax(z_t/T) || softmax(z_s/T)), written out independently of the losses."""
    lt, ls = F.log_softmax(z_t / T, dim=1), F.log_softmax(z_s / T, dim=1)
    return (lt.exp() * (lt - ls)).sum(1)


def kl_subset(z_s, z_t, cols, T=1.0):
    """KL restricted to a column subset by GATHERING those columns (an independent path from masking)."""
    return kl_full(z_s[:, cols], z_t[:, cols], T)


def make(kind: str, num_classes: int = 6, **params):
    cls = LOSSES.get(kind)
    return cls(build_dataclass(cls.Params, params, kind), LossContext(num_classes))


def run(loss, z_s, z_t, y):
    batch = Batch(torch.zeros(len(y), 1), y, torch.arange(len(y)))
    return loss(ModelOut(z_s), ModelOut(z_t), batch)


# --------------------------------------------------------------------------------------------- KD


def test_kd_reference_vector_and_invariances():
    z_t, z_s = t64([[math.log(3), 0.0]]), t64([[0.0, 0.0]])
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx(0.1308120, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert kd_loss(a, a, 4.0).item() == 0.0
    base = kd_loss(a, b, 4.0).item()
    assert kd_loss(a + 3.0, b - 2.0, 4.0).item() == pytest.approx(base, rel=1e-5)
    assert kd_loss(torch.cat([a, a]), torch.cat([b, b]), 4.0).item() == pytest.approx(base, rel=1e-6)


def test_kd_high_temperature_limit():
    g = torch.Generator().manual_seed(1)
    z_s, z_t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    d = z_t - z_s
    limit = ((d - d.mean(1, keepdim=True)) ** 2).sum(1).mean() / (2 * 10)
    err = {T: abs(kd_loss(z_s, z_t, T).item() / limit.item() - 1) for T in (10.0, 100.0)}
    assert err[100.0] < 2e-2 and err[100.0] < err[10.0] / 5  # converges like 1/T


# --------------------------------------------------------------------------------------------- DKD


def test_dkd_reference_vector():
    z_t, z_s, y = t64([[3, 1, 0]]), t64([[1, 2, 0]]), torch.tensor([0])
    tckd, nckd = dkd_terms(z_s, z_t, y, 1.0)
    assert tckd.item() == pytest.approx(0.7982504, abs=1e-6)
    assert nckd.item() == pytest.approx(0.0826077, abs=1e-6)
    pt_y = torch.softmax(z_t, 1)[0, 0].item()
    assert pt_y == pytest.approx(0.8437947, abs=1e-6)
    assert kl_full(z_s, z_t).item() == pytest.approx(0.8111542, abs=1e-6)
    assert (tckd + (1 - pt_y) * nckd).item() == pytest.approx(0.8111542, abs=1e-6)

    value, tckd4, nckd4 = dkd_loss(z_s, z_t, y, 1.0, 8.0, 4.0)
    assert tckd4.item() == pytest.approx(0.8181256, abs=1e-6)
    assert nckd4.item() == pytest.approx(0.1214950, abs=1e-6)
    assert kd_loss(z_s, z_t, 4.0).item() == pytest.approx(0.8811785, abs=1e-6)
    assert value.item() == pytest.approx(1.7901, abs=1e-4)
    assert value.item() == pytest.approx(0.8181256 + 8 * 0.1214950, abs=1e-6)
    # alpha=1, beta=0 is the binary KL alone
    assert dkd_loss(z_s, z_t, y, 1.0, 0.0, 4.0)[0].item() == pytest.approx(0.8181256, abs=1e-6)


@pytest.mark.parametrize("dtype, tol", [(D64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_identity_kd_equals_tckd_plus_coupled_nckd_per_sample(dtype, tol, T):
    g = torch.Generator().manual_seed(2)
    z_s, z_t = 3 * torch.randn(32, 10, generator=g, dtype=dtype), 3 * torch.randn(32, 10, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (32,), generator=g)
    tckd, nckd = dkd_terms(z_s, z_t, y, T)
    pt_y = torch.softmax(z_t / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - pt_y) * nckd, kl_full(z_s, z_t, T), atol=tol, rtol=tol)


def test_dkd_structure():
    g = torch.Generator().manual_seed(3)
    z_s, z_t = torch.randn(8, 5, generator=g, dtype=D64), torch.randn(8, 5, generator=g, dtype=D64)
    y = torch.randint(0, 5, (8,), generator=g)
    tckd, nckd = dkd_terms(z_s, z_t, y, 2.0)
    # NCKD does not depend on either model's target logit
    bump = F.one_hot(y, 5).to(D64) * torch.randn(8, 1, generator=g, dtype=D64) * 50
    torch.testing.assert_close(dkd_terms(z_s + bump, z_t - bump, y, 2.0)[1], nckd, atol=1e-12, rtol=0)
    # NCKD equals the KL over the gathered non-target columns
    for b in range(8):
        cols = [c for c in range(5) if c != y[b]]
        assert nckd[b].item() == pytest.approx(kl_subset(z_s[b:b + 1], z_t[b:b + 1], cols, 2.0).item(), abs=1e-12)
    # TCKD does not change when the non-target logits are permuted (same permutation for both models)
    perm = torch.tensor([0, 3, 1, 4, 2])
    ys = torch.zeros(8, dtype=torch.long)
    t0 = dkd_terms(z_s, z_t, ys, 2.0)[0]
    torch.testing.assert_close(dkd_terms(z_s[:, perm], z_t[:, perm], ys, 2.0)[0], t0, atol=1e-12, rtol=0)
    # zero when the logits are equal; C = 2 leaves one non-target class, so NCKD == 0
    assert dkd_loss(z_s, z_s, y, 1.0, 8.0, 4.0)[0].item() == 0.0
    n2 = dkd_terms(z_s[:, :2], z_t[:, :2], y % 2, 4.0)[1]
    assert torch.equal(n2, torch.zeros_like(n2))


def test_dkd_mask_does_not_leak_at_extreme_logits():
    # A fixed offset of 1000 (the reference code) would leave the target logit 5000 dominating the
    # "non-target" softmax; the finite-negative mask must give the exact non-target KL.
    z_t, z_s = torch.tensor([[5000.0, 10.0, -3000.0, 0.0]]), torch.tensor([[9000.0, -10.0, 0.0, 20.0]])
    _, nckd = dkd_terms(z_s, z_t, torch.tensor([0]), 1.0)
    assert nckd.item() == pytest.approx(kl_subset(z_s.double(), z_t.double(), [1, 2, 3]).item(), rel=1e-6)
    assert nckd.item() > 5.0


def test_soft_labels_use_argmax():
    g = torch.Generator().manual_seed(4)
    z_s, z_t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.tensor([1, 4, 0, 2])
    soft = 0.7 * F.one_hot(y, 5) + 0.3 / 5
    assert torch.equal(dkd_loss(z_s, z_t, soft, 1, 8, 4)[0], dkd_loss(z_s, z_t, y, 1, 8, 4)[0])
    assert torch.equal(torch.stack(nkd_terms(z_s, z_t, soft, 1.0, 1.5)), torch.stack(nkd_terms(z_s, z_t, y, 1.0, 1.5)))


# --------------------------------------------------------------------------------------------- GDKD


def test_gdkd_reference_vector():
    z_t, z_s = t64([[3, 1, 0, -2]]), t64([[1, 2, 0, -1]])
    high, top, other, mask = gdkd_terms(z_s, z_t, 2, 1.0)
    assert mask.tolist() == [[True, True, False, False]]
    assert high.item() == pytest.approx(0.0309148, abs=1e-6)
    assert top.item() == pytest.approx(0.8287249, abs=1e-6)
    assert other.item() == pytest.approx(0.0671308, abs=1e-6)
    p_top = torch.softmax(z_t, 1)[0, :2].sum().item()
    assert p_top == pytest.approx(0.9525741, abs=1e-6)
    assert (high + p_top * top + (1 - p_top) * other).item() == pytest.approx(0.8235204, abs=1e-6)
    assert kl_full(z_s, z_t).item() == pytest.approx(0.8235204, abs=1e-6)
    loss = make("gdkd", 4, w0=1.0, w1=1.0, w2=8.0, k=2, T=1.0)
    value, parts = run(loss, z_s, z_t, torch.tensor([0]))
    assert value.item() == pytest.approx(1.3966857, abs=1e-6)
    assert set(parts) == {"high", "top", "other"}
    # k = 1 at T = 4
    high4, top4, other4, _ = gdkd_terms(z_s, z_t, 1, 4.0)
    assert 16 * high4.item() == pytest.approx(0.8335041, abs=1e-6)
    assert 16 * other4.item() == pytest.approx(0.1100355, abs=1e-6)
    assert top4.item() == 0.0


@pytest.mark.parametrize("k", [1, 2, 5, 7])
@pytest.mark.parametrize("strategy", ["best", "worst"])
def test_gdkd_chain_identity_and_level1_gather(k, strategy):
    g = torch.Generator().manual_seed(5)
    z_s, z_t = 2 * torch.randn(16, 8, generator=g, dtype=D64), 2 * torch.randn(16, 8, generator=g, dtype=D64)
    high, top, other, mask = gdkd_terms(z_s, z_t, k, 3.0, strategy)
    p_top = (torch.softmax(z_t / 3.0, 1) * mask).sum(1)
    torch.testing.assert_close(high + p_top * top + (1 - p_top) * other, kl_full(z_s, z_t, 3.0), atol=1e-12, rtol=0)
    assert (mask.sum(1) == k).all()
    for b in range(16):
        cols = torch.nonzero(mask[b]).squeeze(1)
        rest = torch.nonzero(~mask[b]).squeeze(1)
        # the partition holds the k largest (best) / smallest (worst) teacher logits
        if strategy == "best":
            assert z_t[b, cols].min() >= z_t[b, rest].max()
        else:
            assert z_t[b, cols].max() <= z_t[b, rest].min()
        assert top[b].item() == pytest.approx(kl_subset(z_s[b:b + 1], z_t[b:b + 1], cols, 3.0).item(), abs=1e-12)
        assert other[b].item() == pytest.approx(kl_subset(z_s[b:b + 1], z_t[b:b + 1], rest, 3.0).item(), abs=1e-12)


def test_gdkd_kl_types():
    g = torch.Generator().manual_seed(6)
    z_s, z_t = torch.randn(6, 7, generator=g, dtype=D64), torch.randn(6, 7, generator=g, dtype=D64)
    fwd = gdkd_terms(z_s, z_t, 3, 2.0, kl_type="forward")
    rev = gdkd_terms(z_s, z_t, 3, 2.0, kl_type="reverse")
    both = gdkd_terms(z_s, z_t, 3, 2.0, kl_type="both")
    torch.testing.assert_close(rev[0], fwd[0])  # the level-0 term is always forward
    cols = torch.nonzero(fwd[3][0]).squeeze(1)
    assert rev[1][0].item() == pytest.approx(kl_subset(z_t[:1], z_s[:1], cols, 2.0).item(), abs=1e-12)
    torch.testing.assert_close(both[1], 0.5 * (fwd[1] + rev[1]))
    torch.testing.assert_close(both[2], 0.5 * (fwd[2] + rev[2]))
    for kl_type in ("forward", "reverse", "both"):
        value, _ = run(make("gdkd", 7, k=3, kl_type=kl_type), z_s, z_s, torch.zeros(6, dtype=torch.long))
        assert value.item() == 0.0


@pytest.mark.parametrize("w0, w1, w2", [(1.0, 1.0, 8.0), (0.5, 2.0, 2.0)])
def test_gdkd_k1_with_correct_teacher_equals_dkd(w0, w1, w2):
    g = torch.Generator().manual_seed(7)
    z_s, z_t = 2 * torch.randn(32, 10, generator=g, dtype=D64), 2 * torch.randn(32, 10, generator=g, dtype=D64)
    y = z_t.argmax(1)
    value, parts = run(make("gdkd", 10, w0=w0, w1=w1, w2=w2, k=1, T=4.0), z_s, z_t, y)
    dkd_value, tckd, nckd = dkd_loss(z_s, z_t, y, w0, w2, 4.0)
    assert parts["top"].item() == 0.0
    assert value.item() == pytest.approx(dkd_value.item(), abs=1e-12)
    assert parts["high"].item() == pytest.approx(tckd.item(), abs=1e-12)
    assert parts["other"].item() == pytest.approx(nckd.item(), abs=1e-12)
    # with a wrong teacher GDKD splits at the teacher's top-1, not at the label
    y_wrong = (y + 1) % 10
    assert run(make("gdkd", 10, k=1), z_s, z_t, y_wrong)[0].item() == pytest.approx(
        dkd_loss(z_s, z_t, y, 1.0, 8.0, 4.0)[0].item(), abs=1e-12)


def test_gdkd_tie_break_is_lower_index_first_and_deterministic():
    z = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0], [0.0, 0.0, -1.0, -1.0, 3.0]])
    assert topk_mask(z, 2, "best").tolist() == [
        [False, True, True, False, False], [True, True, False, False, False], [True, False, False, False, True]]
    assert topk_mask(z, 2, "worst").tolist() == [
        [True, False, False, False, True], [True, True, False, False, False], [False, False, True, True, False]]
    big = torch.zeros(64, 300)  # all ties, long rows: a non-stable kernel could pick any k
    expected = torch.zeros(64, 300, dtype=torch.bool)
    expected[:, :5] = True
    for _ in range(3):
        assert torch.equal(topk_mask(big, 5, "best"), expected)
    # the partition uses the teacher's order and is unaffected by the fp32 cast of a half teacher
    assert torch.equal(topk_mask(z.half().float(), 2), topk_mask(z, 2))


def test_gdkd_k_validation():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        LOSSES.get("gdkd").Params(k=0)
    with pytest.raises(UsageError, match=r"gdkd.*k must be an integer >= 1"):
        build_dataclass(LOSSES.get("gdkd").Params, {"k": 0}, "gdkd")
    with pytest.raises(UsageError, match=r"strategy"):
        build_dataclass(LOSSES.get("gdkd").Params, {"strategy": "top"}, "gdkd")
    # C is known at construction: k=5 on 3 classes fails before any step
    with pytest.raises(UsageError, match=r"k=5 must be between 1 and C-1=2 for 3 classes"):
        make("gdkd", 3, k=5)
    with pytest.raises(UsageError, match=r"k=3"):
        make("gdkd", 3, k=3)  # k = C leaves the other set empty
    make("gdkd", 10, k=5)  # 10-class digits with the preset's k=5 is fine
    # and at the first forward when the logits have fewer classes than the context said
    loss = make("gdkd", 10, k=5)
    with pytest.raises(UsageError, match=r"k=5 .* for 4 classes"):
        run(loss, torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------- DIST


def test_dist_reference_vector():
    z_t, z_s = t64([[3, 1, 0], [0, 0, 2]]), t64([[1, 2, 0], [0, 1, 3]])
    inter, intra = dist_terms(z_s, z_t, 1.0)
    assert inter.item() == pytest.approx(0.5908122, abs=1e-6)
    assert intra.item() == pytest.approx(1.63e-6, abs=1e-8)  # B=2: each column correlation is +-1, minus eps
    value, parts = run(make("dist", 3, beta=1.0, gamma=1.0, T=1.0), z_s, z_t, torch.tensor([0, 2]))
    assert value.item() == pytest.approx(0.5908139, abs=1e-6)
    assert set(parts) == {"inter", "intra"}


def test_dist_properties():
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(6, 5, generator=g, dtype=D64), torch.rand(6, 5, generator=g, dtype=D64)
    rho = pearson(a, b, dim=1)
    # Pearson is invariant to a positive affine rescaling of a row (up to the eps on the norms)
    scaled = a.clone()
    scaled[2] = 3.0 * scaled[2] + 0.5
    torch.testing.assert_close(pearson(scaled, b, dim=1), rho, atol=1e-7, rtol=0)
    # equals the textbook correlation coefficient
    ref = torch.corrcoef(torch.stack([a[0], b[0]]))[0, 1]
    assert rho[0].item() == pytest.approx(ref.item(), abs=1e-7)
    z = 2 * torch.randn(8, 5, generator=g)
    assert abs(sum(dist_terms(z, z, 4.0)).item()) < 1e-6  # 0 when P^s = P^t (up to eps)
    # B = 1: the centred column is 0, so intra is exactly 1 with zero gradient
    zs1 = torch.randn(1, 5, generator=g, requires_grad=True)
    _, intra = dist_terms(zs1, torch.randn(1, 5, generator=g), 4.0)
    intra.backward()
    assert intra.item() == 1.0 and torch.equal(zs1.grad, torch.zeros_like(zs1))


# --------------------------------------------------------------------------------------------- NKD


def test_nkd_hand_computed():
    z_t, z_s, y = t64([[3, 1, 0]]), t64([[1, 2, 0]]), torch.tensor([0])
    e = math.e
    pt_y = e**3 / (e**3 + e + 1)
    target = pt_y * (math.log(e + e**2 + 1) - 1)  # -p^t_y log p^s_y
    hat_t = (e / (e + 1), 1 / (e + 1))  # teacher over {1, 0}
    log_hat_s = (2 - math.log(e**2 + 1), -math.log(e**2 + 1))  # student over {2, 0}
    non = -1.5 * (hat_t[0] * log_hat_s[0] + hat_t[1] * log_hat_s[1])
    lt, ln = nkd_terms(z_s, z_t, y, 1.0, 1.5)
    assert lt.item() == pytest.approx(target, abs=1e-12) and lt.item() == pytest.approx(1.1877305, abs=1e-6)
    assert ln.item() == pytest.approx(non, abs=1e-12)
    value, parts = run(make("nkd", 3), z_s, z_t, y)  # defaults T=1, gamma=1.5
    assert value.item() == pytest.approx(target + non, abs=1e-12)
    assert set(parts) == {"target", "nontarget"}


def test_nkd_reductions_and_value_at_equal_logits():
    g = torch.Generator().manual_seed(9)
    z_s, z_t = torch.randn(8, 6, generator=g, dtype=D64), torch.randn(8, 6, generator=g, dtype=D64)
    y = torch.randint(0, 6, (8,), generator=g)
    # gamma = 0: only -(1/B) sum p^t_y log p^s_y
    ref_t = -(torch.softmax(z_t, 1).gather(1, y[:, None]) * F.log_softmax(z_s, 1).gather(1, y[:, None])).mean()
    lt, ln = nkd_terms(z_s, z_t, y, 2.0, 0.0)
    assert lt.item() == pytest.approx(ref_t.item(), abs=1e-12) and ln.item() == 0.0
    # z^s = z^t: target CE of the teacher + gamma T^2 H(p_hat^t) (not zero), with p_hat from gathered columns
    T, gamma = 2.0, 1.5
    ent = []
    for b in range(8):
        cols = [c for c in range(6) if c != y[b]]
        ph = torch.softmax(z_t[b, cols] / T, 0)
        ent.append(-(ph * ph.log()).sum())
    pt_y = torch.softmax(z_t, 1).gather(1, y[:, None]).squeeze(1)
    expected = (-(pt_y * pt_y.log())).mean() + gamma * T * T * torch.stack(ent).mean()
    assert sum(nkd_terms(z_t, z_t, y, T, gamma)).item() == pytest.approx(expected.item(), abs=1e-12)
    assert expected.item() > 0.5


# --------------------------------------------------------------------------------------------- BicKD


def test_bickd_hand_computed_and_reductions():
    z_s, z_t = t64([[2.0, 0.0], [0.0, 1.0]]), t64([[1.0, 0.0], [0.0, 3.0]])
    T, tau = 1.0, 0.5

    def softmax(r):
        m = [math.exp(v) for v in r]
        return [v / sum(m) for v in m]

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    def info_nce(anchors, keys):
        out = 0.0
        for i, a in enumerate(anchors):
            s = [cos(a, k) / tau for k in keys]
            out += -(s[i] - math.log(sum(math.exp(v) for v in s)))
        return out / len(anchors)

    ps, pt = [softmax(r) for r in z_s.tolist()], [softmax(r) for r in z_t.tolist()]
    row = info_nce(ps, pt)
    col = info_nce([list(c) for c in zip(*ps, strict=True)], [list(c) for c in zip(*pt, strict=True)])
    kd, r, c = bickd_terms(z_s, z_t, T, tau)
    assert r.item() == pytest.approx(row, abs=1e-6) and c.item() == pytest.approx(col, abs=1e-6)
    value, parts = run(make("bickd", 2, T=T, tau=tau, lambda_=0.7), z_s, z_t, torch.tensor([0, 1]))
    assert value.item() == pytest.approx(kd.item() + 0.7 * (row + col) / 2, abs=1e-6)
    assert set(parts) == {"kd", "row", "col"}
    # lambda = 0 is vanilla KD bit for bit; so is a batch of one (no negatives: contrast defined as 0)
    assert torch.equal(run(make("bickd", 2, lambda_=0.0), z_s, z_t, torch.tensor([0, 1]))[0], kd_loss(z_s, z_t, 4.0))
    v1, p1 = run(make("bickd", 2), z_s[:1], z_t[:1], torch.tensor([0]))
    assert torch.equal(v1, kd_loss(z_s[:1], z_t[:1], 4.0)) and p1["row"].item() == 0.0 and p1["col"].item() == 0.0


def test_bickd_docstring_says_variant():
    assert "kdcompress variant" in LOSSES.get("bickd").__doc__
    import kdcompress.losses.bickd as mod

    assert "kdcompress variant" in mod.__doc__


# --------------------------------------------------------------------------------------------- all


@pytest.mark.parametrize("kind", ["kd", *NEW])
def test_batch_duplication_and_equal_logits(kind):
    g = torch.Generator().manual_seed(10)
    z_s, z_t = 2 * torch.randn(6, 6, generator=g, dtype=D64), 2 * torch.randn(6, 6, generator=g, dtype=D64)
    y = torch.randint(0, 6, (6,), generator=g)
    loss = make(kind)
    value = run(loss, z_s, z_t, y)[0].item()
    dup = run(loss, torch.cat([z_s, z_s]), torch.cat([z_t, z_t]), torch.cat([y, y]))[0].item()
    if kind == "bickd":
        # duplicating adds a second perfect match per row to the contrast, so BicKD changes by design;
        # its KD part does not
        assert dup != pytest.approx(value, rel=1e-3)
    else:
        assert dup == pytest.approx(value, rel=1e-6, abs=1e-9)
    same = run(loss, z_t, z_t, y)[0].item()
    if kind in ("kd", "dkd", "gdkd"):
        assert same == 0.0
    elif kind == "dist":
        # not exactly 0: with P^s = P^t, 1 - rho = eps / (||P - mean P||^2 + eps) on every row and column
        p = torch.softmax(z_t / 4.0, 1)
        gap = [(1e-8 / (((p - p.mean(d, keepdim=True)) ** 2).sum(d) + 1e-8)).mean() for d in (1, 0)]
        assert same == pytest.approx((16 * (2 * gap[0] + 2 * gap[1])).item(), rel=1e-6)
        assert 0 < same < 1e-4
    else:  # nkd is a cross-entropy; bickd's InfoNCE is positive even at a perfect match
        assert same > 0.0


def _cases():
    g = torch.Generator().manual_seed(11)
    big = torch.tensor([[1e4, -1e4, 0.0, 5e3, -5e3, 1e4], [-1e4, 1e4, 1e4, 0.0, -1e4, 2.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 1e4], [1e4, 1e4, -1e4, -1e4, 3.0, 0.0]])
    return {
        "batch1": (torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g), torch.tensor([3])),
        "absent_classes": (torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g),
                           torch.zeros(5, dtype=torch.long)),
        "extreme": (big, big.flip(1), torch.tensor([0, 1, 5, 2])),
        "extreme_same_argmax": (big, 0.5 * big, torch.tensor([1, 2, 3, 4])),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("kind", ["kd", *NEW])
def test_finite_value_and_gradient(kind, case, dtype):
    z_s, z_t, y = _cases()[case]
    z_s = z_s.to(dtype).requires_grad_(True)
    loss = make(kind)
    value, parts = run(loss, z_s, z_t.to(dtype), y)
    assert value.dtype in (torch.float32, torch.float64)  # computed in fp32 even from half inputs
    assert torch.isfinite(value), (kind, case, dtype, value)
    assert all(torch.isfinite(v) for v in parts.values()), parts
    value.backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad.float()).all(), (kind, case, dtype)


@pytest.mark.parametrize("kind, bad", [
    ("dkd", {"beta": -1.0}), ("dkd", {"T": 0.0}), ("dkd", {"alpha": float("nan")}),
    ("gdkd", {"w2": -0.5}), ("gdkd", {"kl_type": "sideways"}), ("dist", {"gamma": float("inf")}),
    ("nkd", {"T": -1.0}), ("bickd", {"tau": 0.0}), ("bickd", {"lambda_": -1.0}),
])
def test_params_validation(kind, bad):
    with pytest.raises(ValueError):
        LOSSES.get(kind).Params(**bad)
    with pytest.raises(UsageError, match=kind):
        build_dataclass(LOSSES.get(kind).Params, bad, kind)


def test_needs_declared():
    assert "labels" in LOSSES.get("dkd").NEEDS and "labels" in LOSSES.get("nkd").NEEDS
    for kind in NEW:
        assert {"logits", "teacher_logits"} <= LOSSES.get(kind).NEEDS
    assert "labels" not in LOSSES.get("gdkd").NEEDS  # the partition comes from the teacher


# --------------------------------------------------------------------------------------------- logit standardisation

LS_KINDS = ("kd", "dkd", "gdkd", "dist", "nkd", "bickd")


def test_standardized_kd_hand_computed():
    """z^t = [3, 1, 0]: mean 4/3, unbiased var (25 + 1 + 16)/9/2 = 7/3, so z^t' = [5, -1, -4]/sqrt(21);
    z^s = [1, 2, 0]: mean 1, var 1, z^s' = [0, 1, -1]. KL(softmax(z^t') || softmax(z^s')) at T=1 is 0.5257772,
    and T^2 * KL at T=2 is 0.5176764 (computed here with math.exp/log, not torch)."""
    from kdcompress.losses.logspace import standardize

    zt, zs = t64([[3.0, 1.0, 0.0]]), t64([[1.0, 2.0, 0.0]])
    torch.testing.assert_close(standardize(zt), t64([[5.0, -1.0, -4.0]]) / math.sqrt(21), rtol=1e-6, atol=0)
    torch.testing.assert_close(standardize(zs), t64([[0.0, 1.0, -1.0]]), rtol=1e-6, atol=0)
    kd = make("kd", 3, T=1.0, standardize=True)
    assert run(kd, zs, zt, torch.tensor([0]))[0].item() == pytest.approx(0.5257772, abs=1e-6)
    kd2 = make("kd", 3, T=2.0, standardize=True)
    assert run(kd2, zs, zt, torch.tensor([0]))[0].item() == pytest.approx(0.5176764, abs=1e-6)
    # hand check of the T=1 value from the standardised vectors
    pt = [math.exp(v / math.sqrt(21)) for v in (5, -1, -4)]
    ps = [math.exp(v) for v in (0, 1, -1)]
    pt, ps = [v / sum(pt) for v in pt], [v / sum(ps) for v in ps]
    assert sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)) == pytest.approx(0.5257772, abs=1e-6)


@pytest.mark.parametrize("kind", LS_KINDS)
def test_standardized_losses_ignore_student_shift_and_positive_scale(kind):
    """Adding a per-sample constant to, or multiplying by a positive per-sample factor, the student's (or the
    teacher's) logits leaves every standardised loss unchanged; without standardisation scaling does not."""
    g = torch.Generator().manual_seed(4)
    z_s = torch.randn(6, 7, generator=g, dtype=D64)
    z_t = 3 * torch.randn(6, 7, generator=g, dtype=D64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    extra = {"k": 2} if kind == "gdkd" else {}
    on = make(kind, 7, standardize=True, **extra)
    base = run(on, z_s, z_t, y)[0].item()
    shift = torch.randn(6, 1, generator=g, dtype=D64) * 5
    scale = torch.rand(6, 1, generator=g, dtype=D64) * 4 + 0.25
    assert run(on, z_s + shift, z_t, y)[0].item() == pytest.approx(base, rel=1e-6)
    assert run(on, z_s * scale, z_t, y)[0].item() == pytest.approx(base, rel=1e-6)
    assert run(on, z_s * scale + shift, z_t * 2.0 - 1.0, y)[0].item() == pytest.approx(base, rel=1e-6)
    off = make(kind, 7, **extra)
    assert run(off, z_s * 3.0, z_t, y)[0].item() != pytest.approx(run(off, z_s, z_t, y)[0].item(), rel=1e-3)


@pytest.mark.parametrize("kind", LS_KINDS)
def test_standardize_off_is_the_plain_loss_bit_for_bit(kind):
    g = torch.Generator().manual_seed(5)
    z_s, z_t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    extra = {"k": 2} if kind == "gdkd" else {}
    assert torch.equal(run(make(kind, 6, standardize=False, **extra), z_s, z_t, y)[0],
                       run(make(kind, 6, **extra), z_s, z_t, y)[0])
    with pytest.raises(UsageError, match="true or false"):
        make(kind, 6, standardize=1, **extra)


def test_standardized_kd_equals_kd_on_standardized_logits():
    from kdcompress.losses.logspace import standardize

    g = torch.Generator().manual_seed(6)
    z_s, z_t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    got = run(make("kd", 10, T=2.0, standardize=True), z_s, z_t, torch.zeros(5, dtype=torch.long))[0]
    torch.testing.assert_close(got, kd_loss(standardize(z_s), standardize(z_t), 2.0))
