"""Tests of the peer losses, Seesaw (balms_det.losses.seesaw) and EQLv2 (balms_det.losses.eqlv2).

CPU, tiny, seeded. Expected values are written out with math / numpy in the tests, never with
the function under test. The losses compute in float32, so hand-computed values are compared at
a float32 tolerance (rel 1e-5).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from balms_det.losses import sigmoid_loss
from balms_det.losses.eqlv2 import (
    eqlv2_grad_stats,
    eqlv2_loss,
    eqlv2_loss_and_stats,
    eqlv2_probs,
    eqlv2_weights,
)
from balms_det.losses.seesaw import (
    seesaw_batch_counts,
    seesaw_class_term,
    seesaw_log_factors,
    seesaw_loss,
    seesaw_loss_terms,
    seesaw_probs,
    seesaw_update_counts,
)
from balms_det.modeling.normed_linear import NormedLinear

F32 = dict(rel=1e-5, abs=1e-6)  # float32 computation vs float64 hand values


def softplus(x):
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def bce(z, t):  # BCE-with-logits of one element
    return softplus(z) - t * z


def sigm(x):
    return 1.0 / (1.0 + math.exp(-x))


def _labels(x):
    return torch.tensor(x, dtype=torch.int64)


# ------------------------------------------------------------------------------------------
# Seesaw: a numpy reference written from the paper's formulas (loops, float64)
# ------------------------------------------------------------------------------------------
def seesaw_reference(z, y, N, p=0.8, q=2.0, eps=1e-2):
    """(R,) class term + objectness term, and the (R, K) log S matrix (0 on bg rows)."""
    z = np.asarray(z, dtype=np.float64)
    R, C = z.shape
    K = C - 1
    N = np.maximum(np.asarray(N, dtype=np.float64), 1.0)
    out = np.zeros(R)
    log_s = np.zeros((R, K))
    for r in range(R):
        i = y[r]
        out[r] = bce(z[r, K], 1.0 if i == K else 0.0)
        if i == K:
            continue
        zf = z[r, :K]
        sigma = np.exp(zf - zf.max()) / np.exp(zf - zf.max()).sum()
        zt = zf.copy()
        for j in range(K):
            if j == i:
                continue
            m = (N[j] / N[i]) ** p if N[j] < N[i] else 1.0
            ratio = sigma[j] / max(sigma[i], eps)
            c = ratio**q if ratio > 1.0 else 1.0
            log_s[r, j] = math.log(m * c)
            zt[j] += math.log(m * c)
        out[r] += -zt[i] + math.log(np.exp(zt).sum())
    return out, log_s


SS_LOGITS = [
    [2.0, 1.0, 0.5, -1.0],  # class 0 (N = 100): rarer classes mitigated, no compensation
    [0.5, -0.5, 1.5, 0.3],  # class 1 (N = 10): j = 2 mitigated, j = 0 and 2 compensated
    [-5.0, 2.0, 1.0, 0.2],  # class 0 with sigma_0 < eps: the clamp of sigma_i acts
    [0.1, 0.2, -0.3, 1.2],  # background: objectness term only
]
SS_LABELS = [0, 1, 0, 3]
SS_COUNTS = [100.0, 10.0, 1.0]


def test_seesaw_hand_computed_first_roi():
    # ROI 0, class 0, N = [100, 10, 1]: M_01 = 0.1^0.8, M_02 = 0.01^0.8; sigma_0 is the
    # largest, so C = 1; objectness BCE(z_3 = -1, t = 0) = softplus(-1).
    z = SS_LOGITS[0]
    a1 = z[1] + 0.8 * math.log(0.1)
    a2 = z[2] + 0.8 * math.log(0.01)
    expected = -z[0] + math.log(math.exp(z[0]) + math.exp(a1) + math.exp(a2)) + softplus(-1.0)
    out = seesaw_loss(torch.tensor([z]), _labels([0]), torch.tensor(SS_COUNTS), reduction="none")
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([expected], **F32)


def test_seesaw_hand_computed_batch():
    ref, ref_log_s = seesaw_reference(SS_LOGITS, SS_LABELS, SS_COUNTS)
    logits = torch.tensor(SS_LOGITS)
    labels = _labels(SS_LABELS)
    none = seesaw_loss(logits, labels, SS_COUNTS, reduction="none")
    assert none.tolist() == pytest.approx(ref.tolist(), **F32)
    assert seesaw_loss(logits, labels, SS_COUNTS).item() == pytest.approx(ref.sum() / 4, **F32)
    total = seesaw_loss(logits, labels, SS_COUNTS, reduction="sum")
    assert total.item() == pytest.approx(ref.sum(), **F32)
    # the two terms apart: the background ROI has no class term
    cls, obj = seesaw_loss_terms(logits, labels, SS_COUNTS)
    assert cls[3].item() == 0.0
    expected_obj = [softplus(-1.0), softplus(0.3), softplus(0.2), softplus(1.2) - 1.2]
    assert obj.tolist() == pytest.approx(expected_obj, **F32)
    # the factors themselves (foreground rows)
    fg = [0, 1, 2]
    log_s = seesaw_log_factors(logits[fg, :3], labels[fg], torch.tensor(SS_COUNTS))
    assert np.allclose(log_s.numpy(), ref_log_s[fg], rtol=1e-5, atol=1e-6)
    # every factor is active somewhere in this case
    assert ref_log_s[0, 1] < 0 and ref_log_s[1, 0] > 0 and ref_log_s[2, 1] > 0


def test_seesaw_weights_and_class_weights():
    ref, _ = seesaw_reference(SS_LOGITS, SS_LABELS, SS_COUNTS)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    cw = torch.tensor([2.0, 0.25, 1.0])  # ROI weights from classes: [2, 0.25, 2, 1 (bg)]
    logits, labels = torch.tensor(SS_LOGITS), _labels(SS_LABELS)
    out = seesaw_loss(logits, labels, SS_COUNTS, weights=w, class_weights=cw)
    expected = (ref * np.array([0.5 * 2, 2.0 * 0.25, 1.0 * 2, 3.0 * 1])).sum() / 4
    assert out.item() == pytest.approx(expected, **F32)


def test_seesaw_uniform_counts_mitigation_is_one():
    torch.manual_seed(0)
    z = torch.randn(6, 3)
    y = _labels([0, 1, 2, 0, 1, 2])
    log_m = seesaw_log_factors(z, y, torch.full((3,), 42.0), p=0.8, q=0.0)
    assert torch.equal(log_m, torch.zeros(6, 3))
    # and all-zero counts (nothing seen yet: clamped to 1) too
    assert torch.equal(seesaw_log_factors(z, y, torch.zeros(3), q=0.0), torch.zeros(6, 3))


def test_seesaw_q0_uniform_counts_is_cross_entropy_over_fg_columns():
    torch.manual_seed(1)
    logits = torch.randn(5, 4)
    labels = _labels([0, 2, 3, 1, 3])
    fg = labels < 3
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = seesaw_loss(a, labels, torch.full((3,), 7), q=0.0)
    ce = F.cross_entropy(b[fg][:, :3], labels[fg], reduction="sum")
    obj = F.binary_cross_entropy_with_logits(b[:, 3], (~fg).float(), reduction="sum")
    lb = (ce + obj) / 5
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, rtol=1e-6, atol=1e-7)
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    # the class term alone, per ROI
    cls, _ = seesaw_loss_terms(logits, labels, [5, 5, 5], q=0.0)
    ref = F.cross_entropy(logits[:, :3], labels.clamp(max=2), reduction="none") * fg
    assert torch.allclose(cls, ref, rtol=1e-6, atol=1e-7)


def test_seesaw_zero_counts_are_clamped_to_one():
    # N = [5, 0, 0] behaves as [5, 1, 1]: finite, and class 1 / 2 rows see no mitigation
    logits = torch.tensor(SS_LOGITS)
    labels = _labels([1, 2, 0, 3])
    out = seesaw_loss(logits, labels, torch.tensor([5, 0, 0]), reduction="none")
    ref, _ = seesaw_reference(SS_LOGITS, [1, 2, 0, 3], [5.0, 1.0, 1.0])
    assert torch.isfinite(out).all()
    assert out.tolist() == pytest.approx(ref.tolist(), **F32)
    assert torch.equal(out, seesaw_loss(logits, labels, torch.tensor([5, 1, 1]), reduction="none"))


def test_seesaw_true_class_factor_and_signs():
    torch.manual_seed(2)
    z = torch.randn(8, 5) * 3
    y = torch.randint(0, 5, (8,))
    N = torch.tensor([1000.0, 100.0, 10.0, 1.0, 0.0])
    mit = seesaw_log_factors(z, y, N, q=0.0)
    comp = seesaw_log_factors(z, y, N, p=0.0)
    both = seesaw_log_factors(z, y, N)
    assert (mit <= 0).all() and (comp >= 0).all()
    assert torch.allclose(both, mit + comp)
    assert torch.equal(both.gather(1, y[:, None]), torch.zeros(8, 1))  # S_ii = 1
    assert not both.requires_grad


def test_seesaw_gradcheck_class_term_with_detached_compensation():
    # float64, tiny; the factors are computed once from z0 and held constant, which is what
    # the loss differentiates (the compensation factor is detached).
    z0 = torch.tensor([[0.5, -0.5, 1.5], [-1.0, 2.0, 0.3]], dtype=torch.float64)
    y = _labels([1, 0])
    N = torch.tensor([100.0, 10.0, 1.0])
    log_s = seesaw_log_factors(z0, y, N)
    assert (log_s > 0).any()  # the compensation is active at this point
    z = z0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: seesaw_class_term(x, y, log_s), (z,))
    # Recomputing the factors inside the function makes the numerical derivative see the
    # compensation's dependence on z, which the analytic (detached) gradient ignores.
    fn = lambda x: seesaw_class_term(x, y, seesaw_log_factors(x, y, N))  # noqa: E731
    assert not torch.autograd.gradcheck(fn, (z,), raise_exception=False)
    # with q = 0 there is nothing detached to miss
    fn0 = lambda x: seesaw_class_term(x, y, seesaw_log_factors(x, y, N, q=0.0))  # noqa: E731
    assert torch.autograd.gradcheck(fn0, (z,))


def test_seesaw_gradient_is_closed_form():
    # d loss / d z = (softmax(z~) - onehot) / R on the fg columns of fg rows, plus
    # (sigmoid(z_K) - 1[y == K]) / R on the objectness column; z~ with constant factors.
    _, ref_log_s = seesaw_reference(SS_LOGITS, SS_LABELS, SS_COUNTS)
    z = np.array(SS_LOGITS)
    expected = np.zeros_like(z)
    for r, i in enumerate(SS_LABELS):
        expected[r, 3] = (sigm(z[r, 3]) - (1.0 if i == 3 else 0.0)) / 4
        if i == 3:
            continue
        zt = z[r, :3] + ref_log_s[r]
        sm = np.exp(zt) / np.exp(zt).sum()
        sm[i] -= 1.0
        expected[r, :3] = sm / 4
    logits = torch.tensor(SS_LOGITS, requires_grad=True)
    seesaw_loss(logits, _labels(SS_LABELS), SS_COUNTS).backward()
    assert np.allclose(logits.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_seesaw_objectness_is_mmdetection_two_logit_softmax():
    # mmdetection: CE over (a, b) = (fg, bg) logits; here z_K = b - a.
    torch.manual_seed(3)
    a, b = torch.randn(6), torch.randn(6)
    labels = _labels([0, 3, 1, 3, 2, 3])
    t = (labels == 3).long()
    two = F.cross_entropy(torch.stack([a, b], dim=1), t, reduction="none")
    logits = torch.cat([torch.randn(6, 3), (b - a)[:, None]], dim=1)
    _, obj = seesaw_loss_terms(logits, labels, [1, 1, 1])
    assert torch.allclose(obj, two, rtol=1e-6, atol=1e-7)
    # and the scores: softmax(a, b)[fg] = 1 - sigmoid(z_K)
    probs = seesaw_probs(logits)
    assert torch.allclose(probs[:, 3], F.softmax(torch.stack([a, b], 1), 1)[:, 1], atol=1e-6)


def test_seesaw_probs_hand_computed():
    z = [0.0, math.log(3.0), 0.0, math.log(1.0 / 3.0)]  # softmax_fg = [0.2, 0.6, 0.2], p_bg 1/4
    probs = seesaw_probs(torch.tensor([z], dtype=torch.float16))
    assert probs.dtype == torch.float32
    assert probs[0].tolist() == pytest.approx([0.15, 0.45, 0.15, 0.25], abs=1e-3)
    probs = seesaw_probs(torch.tensor([z]))
    assert probs[0].tolist() == pytest.approx([0.15, 0.45, 0.15, 0.25], **F32)
    assert seesaw_probs(torch.zeros(0, 4)).shape == (0, 4)


def test_seesaw_counts_update_after_one_step():
    labels = _labels([0, 2, 2, 3, 1, 3, 2])
    assert seesaw_batch_counts(labels, 3).tolist() == [1.0, 1.0, 3.0]
    assert seesaw_batch_counts(labels, 3).dtype == torch.float64
    cum = torch.tensor([10.0, 0.0, 5.0], dtype=torch.float64)
    new = seesaw_update_counts(cum, labels)
    assert new.tolist() == [11.0, 1.0, 8.0]
    assert cum.tolist() == [10.0, 0.0, 5.0]  # out of place
    assert seesaw_update_counts(cum, _labels([3, 3])).tolist() == [10.0, 0.0, 5.0]
    assert seesaw_batch_counts(_labels([]), 3).tolist() == [0.0, 0.0, 0.0]
    # the loss of the step then uses the updated counts (mmdetection's order)
    logits = torch.tensor(SS_LOGITS[:3])
    ref, _ = seesaw_reference(SS_LOGITS[:3], [0, 1, 0], [12.0, 1.0, 5.0])
    new = seesaw_update_counts(cum, _labels([0, 1, 0]))
    out = seesaw_loss(logits, _labels([0, 1, 0]), new, reduction="none")
    assert out.tolist() == pytest.approx(ref.tolist(), **F32)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        seesaw_batch_counts(_labels([0, 4]), 3)
    with pytest.raises(ValueError, match="integer"):
        seesaw_update_counts(cum, torch.tensor([0.0]))


def test_seesaw_empty_batch():
    logits = torch.zeros(0, 4, requires_grad=True)
    out = seesaw_loss(logits, _labels([]), [3, 2, 1])
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert logits.grad.shape == (0, 4)
    assert seesaw_loss(logits, _labels([]), [3, 2, 1], reduction="none").shape == (0,)


def test_seesaw_shape_errors():
    with pytest.raises(ValueError, match="mmdetection"):
        seesaw_loss(torch.zeros(2, 5), _labels([0, 3]), [1, 1, 1])
    with pytest.raises(ValueError, match="no background column"):
        seesaw_loss(torch.zeros(2, 3), _labels([0, 1]), [1, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 4]), [1, 1, 1])
    with pytest.raises(ValueError, match="rows"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1, 2]), [1, 1, 1])
    with pytest.raises(ValueError, match="cum_counts"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1]), torch.ones(3, 1))
    with pytest.raises(ValueError, match="p must"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1]), [1, 1, 1], p=-1.0)
    with pytest.raises(ValueError, match="eps"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1]), [1, 1, 1], eps=0.0)
    with pytest.raises(ValueError, match="reduction"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1]), [1, 1, 1], reduction="avg")
    with pytest.raises(ValueError, match="weights"):
        seesaw_loss(torch.zeros(2, 4), _labels([0, 1]), [1, 1, 1], weights=torch.ones(3))


def test_normed_linear_is_a_cosine_classifier_with_linear_layout():
    torch.manual_seed(4)
    m = NormedLinear(6, 4, tau=20.0)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    x = torch.randn(3, 6)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    wn = m.weight.detach().numpy() / np.linalg.norm(m.weight.detach().numpy(), axis=1)[:, None]
    expected = 20.0 * xn @ wn.T + m.bias.detach().numpy()
    assert np.allclose(m(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(m(5.0 * x), m(x), atol=1e-4)  # scale-invariant in x
    # checkpoints: same names and shapes as nn.Linear, both ways
    lin = nn.Linear(6, 4)
    assert {k: v.shape for k, v in m.state_dict().items()} == {
        k: v.shape for k, v in lin.state_dict().items()
    }
    lin.load_state_dict(m.state_dict())
    m2 = NormedLinear(6, 4)
    m2.load_state_dict(lin.state_dict())
    assert torch.equal(m2(x), m(x))
    assert isinstance(m, nn.Linear) and "tau=20.0" in repr(m)
    assert m(torch.randn(3, 6, dtype=torch.float64).float()).shape == (3, 4)


# ------------------------------------------------------------------------------------------
# EQLv2
# ------------------------------------------------------------------------------------------
EQ_LOGITS = [
    [1.0, -0.5, 0.2, 9.0],  # class 0 (the last column is background: ignored by default)
    [-0.3, 0.8, -1.2, -9.0],  # class 2
    [0.4, 0.1, -0.7, 3.0],  # background: all-zero targets
]
EQ_LABELS = [0, 2, 3]
EQ_POS = [0.8, 3.0, 0.05]
EQ_NEG = [1.0, 2.0, 1.0]  # g = [0.8, 1.5, 0.05]


def eqlv2_reference_weights(pos, neg, gamma=12.0, mu=0.8, alpha=4.0):
    q = [1.0 / (1.0 + math.exp(-gamma * (p / (n + 1e-10) - mu))) for p, n in zip(pos, neg)]
    return [1.0 + alpha * (1.0 - qj) for qj in q], q


def eqlv2_reference(z, y, pos, neg):
    """(R,) per-ROI losses, (K,) pos and neg increments, by loops."""
    K = len(pos)
    r_w, q_w = eqlv2_reference_weights(pos, neg)
    loss = np.zeros(len(z))
    pos_inc, neg_inc = np.zeros(K), np.zeros(K)
    for r, row in enumerate(z):
        for j in range(K):
            t = 1.0 if y[r] == j else 0.0
            w = r_w[j] if t else q_w[j]
            loss[r] += w * bce(row[j], t)
            g = abs(sigm(row[j]) - t) * w
            pos_inc[j] += g * t
            neg_inc[j] += g * (1.0 - t)
    return loss, pos_inc, neg_inc


def test_eqlv2_weights_at_mu_and_hand_values():
    pos_w, neg_w = eqlv2_weights(torch.tensor([0.8, 1.6]), torch.tensor([1.0, 2.0]))
    assert neg_w.tolist() == pytest.approx([0.5, 0.5], abs=1e-7)  # g = mu: f = 1/2
    assert pos_w.tolist() == pytest.approx([3.0, 3.0], abs=1e-6)  # r = 1 + alpha / 2
    pos_w, neg_w = eqlv2_weights(torch.tensor([0.8]), torch.tensor([1.0]), alpha=2.0)
    assert pos_w.item() == pytest.approx(2.0, abs=1e-6)
    r_ref, q_ref = eqlv2_reference_weights(EQ_POS, EQ_NEG)
    pos_w, neg_w = eqlv2_weights(torch.tensor(EQ_POS), torch.tensor(EQ_NEG))
    assert pos_w.dtype == neg_w.dtype == torch.float32
    assert pos_w.tolist() == pytest.approx(r_ref, **F32)
    assert neg_w.tolist() == pytest.approx(q_ref, **F32)
    # a class never seen positive (pos = 0, neg > 0): q = f(0), r ~ 1 + alpha
    pos_w, neg_w = eqlv2_weights(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 1.0]))
    assert neg_w[0].item() == pytest.approx(1.0 / (1.0 + math.exp(9.6)), rel=1e-5)
    assert pos_w[0].item() == pytest.approx(5.0 - 4.0 / (1.0 + math.exp(9.6)), rel=1e-6)
    # no statistics yet: all weights 1 (the published first step)
    pos_w, neg_w = eqlv2_weights(torch.zeros(3), torch.zeros(3))
    assert pos_w.tolist() == [1.0] * 3 and neg_w.tolist() == [1.0] * 3


def test_eqlv2_hand_computed():
    ref, _, _ = eqlv2_reference(EQ_LOGITS, EQ_LABELS, EQ_POS, EQ_NEG)
    args = (torch.tensor(EQ_LOGITS), _labels(EQ_LABELS), torch.tensor(EQ_POS), torch.tensor(EQ_NEG))
    none = eqlv2_loss(*args, reduction="none")
    assert none.dtype == torch.float32
    assert none.tolist() == pytest.approx(ref.tolist(), **F32)
    assert eqlv2_loss(*args).item() == pytest.approx(ref.sum() / 3, **F32)
    assert eqlv2_loss(*args, reduction="sum").item() == pytest.approx(ref.sum(), **F32)
    # the background column is ignored; (R, K) logits give the same
    other = torch.tensor(EQ_LOGITS)
    other[:, 3] = torch.tensor([-4.0, 7.0, 0.0])
    assert torch.equal(eqlv2_loss(other, *args[1:], reduction="none"), none)
    assert torch.equal(eqlv2_loss(args[0][:, :3], *args[1:], reduction="none"), none)
    # weights and class weights multiply the per-ROI loss; mean divides by R
    w, cw = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    out = eqlv2_loss(*args, weights=w, class_weights=cw)
    assert out.item() == pytest.approx((ref * [2.0 * 3.0, 0.5, 0.5]).sum() / 3, **F32)


def test_eqlv2_huge_g_is_plain_sigmoid_bce():
    torch.manual_seed(5)
    logits = torch.randn(6, 5)
    labels = _labels([0, 1, 4, 2, 4, 3])
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    pos, neg = torch.full((4,), 1e6), torch.full((4,), 1.0)  # g = 1e6: q = 1, r = 1
    pos_w, neg_w = eqlv2_weights(pos, neg)
    assert pos_w.tolist() == [1.0] * 4 and neg_w.tolist() == [1.0] * 4
    la = eqlv2_loss(a, labels, pos, neg)
    lb = sigmoid_loss(b[:, :4], labels)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, rtol=1e-6, atol=1e-7)
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-8)
    assert torch.equal(a.grad[:, 4], torch.zeros(6))  # background column: no gradient
    # zero statistics (the first step) give the plain loss too
    assert torch.allclose(eqlv2_loss(logits, labels, torch.zeros(4), torch.zeros(4)), lb)


def test_eqlv2_gradient_uses_constant_weights():
    # d loss / d z_rj = w_rj (sigmoid(z_rj) - t_rj) / R: no gradient through the weights
    r_w, q_w = eqlv2_reference_weights(EQ_POS, EQ_NEG)
    expected = np.zeros((3, 4))
    for r, row in enumerate(EQ_LOGITS):
        for j in range(3):
            t = 1.0 if EQ_LABELS[r] == j else 0.0
            expected[r, j] = (r_w[j] if t else q_w[j]) * (sigm(row[j]) - t) / 3
    logits = torch.tensor(EQ_LOGITS, requires_grad=True)
    eqlv2_loss(logits, _labels(EQ_LABELS), torch.tensor(EQ_POS), torch.tensor(EQ_NEG)).backward()
    assert np.allclose(logits.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_eqlv2_state_update_after_one_step():
    _, ref_pos, ref_neg = eqlv2_reference(EQ_LOGITS, EQ_LABELS, EQ_POS, EQ_NEG)
    logits = torch.tensor(EQ_LOGITS, requires_grad=True)
    labels = _labels(EQ_LABELS)
    pos, neg = torch.tensor(EQ_POS), torch.tensor(EQ_NEG)
    pos_inc, neg_inc = eqlv2_grad_stats(logits, labels, pos, neg)
    assert not pos_inc.requires_grad and not neg_inc.requires_grad
    assert pos_inc.dtype == neg_inc.dtype == torch.float32
    assert pos_inc.tolist() == pytest.approx(ref_pos.tolist(), **F32)
    assert neg_inc.tolist() == pytest.approx(ref_neg.tolist(), **F32)
    # class 1 has no positive in the batch
    assert pos_inc[1].item() == 0.0
    # by hand for class 0: ROI 0 is its positive, ROIs 1 and 2 its negatives
    r0, q0 = eqlv2_reference_weights(EQ_POS, EQ_NEG)[0][0], 0.5  # g_0 = mu: q = 1/2
    assert pos_inc[0].item() == pytest.approx(r0 * (1.0 - sigm(1.0)), **F32)
    assert neg_inc[0].item() == pytest.approx(q0 * (sigm(-0.3) + sigm(0.4)), **F32)
    # the combined call gives the same loss and increments
    loss, p2, n2 = eqlv2_loss_and_stats(logits, labels, pos, neg)
    assert torch.equal(p2, pos_inc) and torch.equal(n2, neg_inc)
    assert torch.equal(loss, eqlv2_loss(logits, labels, pos, neg))
    # the next step's weights come from the updated buffers
    new_pos, new_neg = pos + pos_inc, neg + neg_inc
    r_ref, q_ref = eqlv2_reference_weights((EQ_POS + ref_pos).tolist(), (EQ_NEG + ref_neg).tolist())
    pos_w, neg_w = eqlv2_weights(new_pos, new_neg)
    assert pos_w.tolist() == pytest.approx(r_ref, **F32)
    assert neg_w.tolist() == pytest.approx(q_ref, **F32)
    # first step from zero buffers: unit weights, increments are the raw |sigmoid(z) - t| sums
    p0, n0 = eqlv2_grad_stats(logits, labels, torch.zeros(3), torch.zeros(3))
    assert p0[2].item() == pytest.approx(1.0 - sigm(-1.2), **F32)
    assert n0[2].item() == pytest.approx(sigm(0.2) + sigm(-0.7), **F32)


def test_eqlv2_stats_with_roi_weights():
    _, ref_pos, ref_neg = eqlv2_reference(EQ_LOGITS, EQ_LABELS, EQ_POS, EQ_NEG)
    args = (torch.tensor(EQ_LOGITS), _labels(EQ_LABELS), torch.tensor(EQ_POS), torch.tensor(EQ_NEG))
    w = torch.tensor([2.0, 1.0, 1.0])
    p_plain, _ = eqlv2_grad_stats(*args, weights=w)  # ignored by default (as published)
    assert p_plain.tolist() == pytest.approx(ref_pos.tolist(), **F32)
    p_w, n_w = eqlv2_grad_stats(*args, weights=w, stats_with_roi_weights=True)
    # ROI 0 (the only class-0 positive) counts twice; class 0's negatives are ROIs 1, 2
    assert p_w[0].item() == pytest.approx(2.0 * ref_pos[0], **F32)
    assert n_w[0].item() == pytest.approx(ref_neg[0], **F32)


def test_eqlv2_objectness_variant_and_probs():
    ref, ref_pos, ref_neg = eqlv2_reference(EQ_LOGITS, EQ_LABELS, EQ_POS, EQ_NEG)
    obj = [bce(9.0, 0.0), bce(-9.0, 0.0), bce(3.0, 1.0)]
    args = (torch.tensor(EQ_LOGITS), _labels(EQ_LABELS), torch.tensor(EQ_POS), torch.tensor(EQ_NEG))
    out, p, n = eqlv2_loss_and_stats(*args, reduction="none", objectness=True)
    assert out.tolist() == pytest.approx((ref + obj).tolist(), **F32)
    assert p.tolist() == pytest.approx(ref_pos.tolist(), **F32)  # no statistics for it
    with pytest.raises(ValueError, match="objectness"):
        eqlv2_loss(args[0][:, :3], *args[1:], objectness=True)
    z = torch.tensor([[0.0, 2.0, -1.0, 1.0]])
    probs = eqlv2_probs(z, objectness=True)
    s = [sigm(0.0), sigm(2.0), sigm(-1.0)]
    bg = sigm(1.0)
    assert probs[0].tolist() == pytest.approx([x * (1 - bg) for x in s] + [bg], **F32)
    assert eqlv2_probs(z)[0].tolist() == pytest.approx(s + [0.0], **F32)


def test_eqlv2_empty_batch():
    logits = torch.zeros(0, 4, requires_grad=True)
    loss, p, n = eqlv2_loss_and_stats(logits, _labels([]), torch.ones(3), torch.ones(3))
    assert loss.item() == 0.0 and p.tolist() == [0.0] * 3 and n.tolist() == [0.0] * 3
    loss.backward()
    assert logits.grad.shape == (0, 4)


def test_eqlv2_shape_errors():
    z, y = torch.zeros(2, 4), _labels([0, 3])
    with pytest.raises(ValueError, match="K\\+1 = 4"):
        eqlv2_loss(torch.zeros(2, 6), y, torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        eqlv2_loss(z, y, torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="1-D"):
        eqlv2_loss(z, y, torch.ones(3, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="float"):
        eqlv2_loss(z, y, torch.ones(3, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        eqlv2_loss(z, _labels([0, 4]), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        eqlv2_loss(z, y, torch.ones(3), torch.ones(3), reduction="avg")


# ------------------------------------------------------------------------------------------
# Half precision at LVIS size (K = 1203, R = 512)
# ------------------------------------------------------------------------------------------
# Both losses cast the logits to float32 first, so on the same (rounded) logits the loss equals
# the float32 loss to float32 round-off and the gradient is the float32 gradient rounded to the
# input dtype: we allow 1e-3 relative (fp16, 11-bit mantissa) / 8e-3 (bf16, 8-bit) plus an
# absolute 1e-7 for fp16 subnormals.
HALF_TOL = {torch.float16: dict(rtol=1e-3, atol=1e-7), torch.bfloat16: dict(rtol=8e-3, atol=1e-7)}


def _lvis_case():
    g = torch.Generator().manual_seed(6)
    K, R = 1203, 512
    logits = torch.randn(R, K + 1, generator=g) * 2.0
    labels = torch.full((R,), K, dtype=torch.int64)
    labels[:128] = torch.randint(0, K, (128,), generator=g)  # 25% foreground
    counts = (1e4 * torch.rand(K, generator=g) ** 4).floor()  # long-tailed, some zeros
    pos = torch.rand(K, generator=g) * 5.0
    neg = torch.rand(K, generator=g) * 5.0 + 1.0
    return logits, labels, counts, pos, neg


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    logits, labels, counts, pos, neg = _lvis_case()
    low = logits.to(dtype)
    ref_in = low.float()  # the same values in float32
    cases = [
        lambda z: (seesaw_loss(z, labels, counts),),
        lambda z: eqlv2_loss_and_stats(z, labels, pos, neg),
    ]
    for fn in cases:
        a = low.clone().requires_grad_()
        b = ref_in.clone().requires_grad_()
        out_a, out_b = fn(a), fn(b)
        out_a[0].backward()
        out_b[0].backward()
        la, lb = out_a[0], out_b[0]
        assert la.dtype == torch.float32 and torch.isfinite(la)
        assert a.grad.dtype == dtype and torch.isfinite(a.grad).all()
        assert la.item() == pytest.approx(lb.item(), rel=1e-6)
        torch.testing.assert_close(a.grad.float(), b.grad, **HALF_TOL[dtype])
        for sa, sb in zip(out_a[1:], out_b[1:]):  # EQLv2's statistics: float32 either way
            assert sa.dtype == torch.float32 and torch.equal(sa, sb)


# ------------------------------------------------------------------------------------------
# Kill and resume: the running state (Seesaw's counts, EQLv2's accumulated gradients)
# ------------------------------------------------------------------------------------------
STATE = {"seesaw": ("seesaw_counts",), "eqlv2": ("eqlv2_pos_grad", "eqlv2_neg_grad")}


@pytest.mark.parametrize("loss", sorted(STATE))
def test_kill_and_resume_restores_the_running_state(loss, tmp_path):
    from conftest import tiny_cfg
    from test_meta_reweigher import FAST, _Killed, _resumable_trainer

    k = 2
    opts = ["MODEL.ROI_BOX_HEAD.BALMS.LOSS", loss, *FAST]
    opts += ["SOLVER.MAX_ITER", str(2 * k), "SOLVER.CHECKPOINT_PERIOD", str(k)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = _resumable_trainer(tiny_cfg(*opts, output_dir=tmp_path / "full"))
        full.resume_or_load(resume=False)
        full.train()
        cut = tiny_cfg(*opts, output_dir=tmp_path / "cut")
        first = _resumable_trainer(cut, kill_after=k - 1)
        first.resume_or_load(resume=False)
        with pytest.raises(_Killed):
            first.train()
        after_k = {n: getattr(first.model.roi_heads.box_predictor, n).clone() for n in STATE[loss]}
        del first
        second = _resumable_trainer(cut)
        second.resume_or_load(resume=True)
        assert second.start_iter == k
        p = second.model.roi_heads.box_predictor
        for n in STATE[loss]:  # restored from the checkpoint, not reset to zero
            assert getattr(p, n).abs().sum() > 0
            torch.testing.assert_close(getattr(p, n), after_k[n], rtol=0, atol=0)
        second._trainer.data_loader.start = second.start_iter
        second.train()
    finally:
        torch.set_num_threads(threads)
    a, b = full.model.roi_heads.box_predictor, second.model.roi_heads.box_predictor
    for n in STATE[loss]:
        torch.testing.assert_close(getattr(b, n), getattr(a, n), rtol=1e-6, atol=1e-6)
        assert getattr(b, n).abs().sum() > 0
