"""Tests of balms_det.losses (CPU, tiny, seeded). Expected values are written out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from balms_det.losses import (
    SIGMOID_PRIOR_EPS,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    balanced_softmax_shift,
    expand_class_weights,
    label_over_smooth_loss,
    sigmoid_loss,
    sigmoid_prior_shift,
    softmax_loss,
)


def softplus(x):
    return math.log1p(math.exp(x))


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# Shared hand-computed case: 2 ROIs, K = 2; ROI 0 is foreground (class 0), ROI 1 background.
SM_LOGITS = [[1.0, 0.5, -0.5], [0.2, -0.3, 0.4]]  # (R, K+1), background column last
SIG_LOGITS = [[1.0, -0.5], [0.3, -0.2]]  # (R, K), no background column
LABELS = [0, 2]


def _t(x, dtype=torch.float64, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def _labels(x=LABELS):
    return torch.tensor(x, dtype=torch.int64)


def _random_case(R=6, K=4, seed=0, dtype=torch.float64, sigmoid=False):
    g = torch.Generator().manual_seed(seed)
    C = K if sigmoid else K + 1
    logits = torch.randn(R, C, generator=g, dtype=dtype)
    labels = torch.randint(0, K + 1, (R,), generator=g)
    labels[0], labels[1] = 0, K  # at least one foreground and one background ROI
    return logits, labels


# ------------------------------------------------------------------------------------------
# Balanced softmax
# ------------------------------------------------------------------------------------------
def test_balanced_softmax_equal_counts_is_cross_entropy():
    logits, labels = _random_case(dtype=torch.float32)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = balanced_softmax_loss(a, labels, torch.full((4,), 7))
    lb = F.cross_entropy(b, labels)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    assert torch.allclose(a.grad, b.grad)


def test_balanced_softmax_tau0_is_cross_entropy():
    logits, labels = _random_case()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = balanced_softmax_loss(a, labels, [1000, 50, 3, 1], tau=0.0)
    lb = F.cross_entropy(b, labels)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    assert torch.allclose(a.grad, b.grad)
    # and skewed counts with tau = 1 do change it
    assert not torch.allclose(balanced_softmax_loss(logits, labels, [1000, 50, 3, 1]), lb)


def test_balanced_softmax_hand_computed():
    # counts [3, 1], K = 2: shift = log(2*3/4) = log(1.5), log(2*1/4) = log(0.5); bg unshifted
    s0, s1 = math.log(1.5), math.log(0.5)
    l0 = -(1.0 + s0) + lse(1.0 + s0, 0.5 + s1, -0.5)
    l1 = -0.4 + lse(0.2 + s0, -0.3 + s1, 0.4)
    out = balanced_softmax_loss(_t(SM_LOGITS), _labels(), torch.tensor([3, 1]))
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)
    none = balanced_softmax_loss(_t(SM_LOGITS), _labels(), [3.0, 1.0], reduction="none")
    assert none.tolist() == pytest.approx([l0, l1], rel=1e-12)
    total = balanced_softmax_loss(_t(SM_LOGITS), _labels(), [3, 1], reduction="sum")
    assert total.item() == pytest.approx(l0 + l1, rel=1e-12)
    # tau = 1/4: shift scaled by 1/4
    q0, q1 = s0 / 4, s1 / 4
    m0 = -(1.0 + q0) + lse(1.0 + q0, 0.5 + q1, -0.5)
    m1 = -0.4 + lse(0.2 + q0, -0.3 + q1, 0.4)
    out = balanced_softmax_loss(_t(SM_LOGITS), _labels(), [3, 1], tau=0.25)
    assert out.item() == pytest.approx((m0 + m1) / 2, rel=1e-12)


def test_balanced_softmax_shift_values():
    shift = balanced_softmax_shift([3, 1])
    assert shift.tolist() == pytest.approx([math.log(1.5), math.log(0.5)], rel=1e-12)
    assert balanced_softmax_shift([3, 1], tau=0.5).tolist() == pytest.approx(
        [0.5 * math.log(1.5), 0.5 * math.log(0.5)], rel=1e-12
    )
    # zero count clamped to min_count: [4, 0] -> [4, 1], mean 2.5
    assert balanced_softmax_shift([4, 0]).tolist() == pytest.approx(
        [math.log(4 / 2.5), math.log(1 / 2.5)], rel=1e-12
    )


def test_balanced_softmax_count_scale_invariance():
    logits, labels = _random_case()
    counts = torch.tensor([120.0, 30.0, 4.0, 2.0])
    a = balanced_softmax_loss(logits, labels, counts)
    b = balanced_softmax_loss(logits, labels, counts * 37.5)
    assert torch.allclose(a, b, rtol=1e-12, atol=0)
    assert not torch.allclose(a, F.cross_entropy(logits, labels))


# ------------------------------------------------------------------------------------------
# Sigmoid family
# ------------------------------------------------------------------------------------------
def test_balanced_sigmoid_hand_computed_row_dependent_shift():
    # image counts [3, 1], 10 images: pi = [0.3, 0.1]
    s0, s1 = math.log(0.3 / 0.7), math.log(0.1 / 0.9)
    labels = _labels([1, 2])  # ROI 0 foreground (class 1): shifted; ROI 1 background: not
    l0 = softplus(1.0 + s0) + (softplus(-0.5 + s1) - (-0.5 + s1))
    l1 = softplus(0.3) + softplus(-0.2)
    none = balanced_sigmoid_loss(_t(SIG_LOGITS), labels, [3, 1], 10, reduction="none")
    assert none.tolist() == pytest.approx([l0, l1], rel=1e-12)
    out = balanced_sigmoid_loss(_t(SIG_LOGITS), labels, [3, 1], torch.tensor(10))
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)


def test_sigmoid_hand_computed_background_rows_all_zero_targets():
    labels = _labels([1, 2])
    l0 = softplus(1.0) + (softplus(-0.5) + 0.5)
    l1 = softplus(0.3) + softplus(-0.2)
    none = sigmoid_loss(_t(SIG_LOGITS), labels, reduction="none")
    assert none.tolist() == pytest.approx([l0, l1], rel=1e-12)
    out = sigmoid_loss(_t(SIG_LOGITS), labels)
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)
    # Detectron2's form: sum over ROIs and classes / R
    targets = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(_t(SIG_LOGITS), targets, reduction="sum") / 2
    assert torch.allclose(out, ref)


def test_sigmoid_prior_shift_values_and_clamp():
    shift = sigmoid_prior_shift([3, 1, 0, 10, 20], 10)
    eps = SIGMOID_PRIOR_EPS
    expected = [
        math.log(0.3 / 0.7),
        math.log(0.1 / 0.9),
        math.log(0.1 / 0.9),  # zero count clamped to 1
        math.log((1 - eps) / eps),  # pi = 1 clamped to 1 - eps
        math.log((1 - eps) / eps),  # pi > 1 clamped too
    ]
    assert shift.tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(shift).all()


# ------------------------------------------------------------------------------------------
# Label over-smoothing and plain softmax
# ------------------------------------------------------------------------------------------
def test_label_over_smooth_delta0_is_cross_entropy():
    logits, labels = _random_case()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = label_over_smooth_loss(a, labels, 0.0)
    lb = F.cross_entropy(b, labels)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    assert torch.allclose(a.grad, b.grad)


def test_label_over_smooth_hand_computed():
    # C = 3, delta = 0.5: true class 1 - 0.5 + 0.5/3 = 2/3, others 1/6
    z0, z1 = SM_LOGITS
    l0 = lse(*z0) - (2 / 3 * z0[0] + 1 / 6 * z0[1] + 1 / 6 * z0[2])
    l1 = lse(*z1) - (1 / 6 * z1[0] + 1 / 6 * z1[1] + 2 / 3 * z1[2])
    none = label_over_smooth_loss(_t(SM_LOGITS), _labels(), 0.5, reduction="none")
    assert none.tolist() == pytest.approx([l0, l1], rel=1e-12)
    out = label_over_smooth_loss(_t(SM_LOGITS), _labels(), 0.5)
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)


def test_label_over_smooth_foreground_only_hand_computed():
    # K = 2, delta = 0.5: the foreground ROI (label 0) gets 1 - 0.5 + 0.5/2 = 3/4 and 1/4 on the
    # two foreground columns, 0 on background; the background ROI (label 2) stays one-hot
    z0, z1 = SM_LOGITS
    l0 = lse(*z0) - (3 / 4 * z0[0] + 1 / 4 * z0[1])
    l1 = lse(*z1) - z1[2]
    logits = _t(SM_LOGITS).requires_grad_()
    none = label_over_smooth_loss(logits, _labels(), 0.5, reduction="none", foreground_only=True)
    assert none.tolist() == pytest.approx([l0, l1], rel=1e-12)
    # gradient = softmax - targets
    none.sum().backward()
    p = F.softmax(_t(SM_LOGITS), dim=1)
    targets = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 1.0]], dtype=p.dtype)
    assert torch.allclose(logits.grad, p - targets, atol=1e-12)
    # delta 0 is cross-entropy here too
    assert label_over_smooth_loss(
        _t(SM_LOGITS), _labels(), 0.0, foreground_only=True
    ).item() == pytest.approx(F.cross_entropy(_t(SM_LOGITS), _labels()).item(), rel=1e-12)


def test_softmax_hand_computed():
    z0, z1 = SM_LOGITS
    l0, l1 = lse(*z0) - z0[0], lse(*z1) - z1[2]
    out = softmax_loss(_t(SM_LOGITS), _labels())
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)


# ------------------------------------------------------------------------------------------
# Weighting
# ------------------------------------------------------------------------------------------
def test_expand_class_weights_background_gets_one():
    cw = torch.tensor([2.0, 0.5])
    out = expand_class_weights(torch.tensor([0, 2, 1, 2]), cw, 2)
    assert out.tolist() == [2.0, 1.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        expand_class_weights(torch.tensor([0]), torch.ones(3), 2)


LOSS_CASES = {
    "softmax": (lambda z, y, **kw: softmax_loss(z, y, **kw), False),
    "balanced_softmax": (lambda z, y, **kw: balanced_softmax_loss(z, y, [3, 1], **kw), False),
    "label_over_smooth": (lambda z, y, **kw: label_over_smooth_loss(z, y, 0.9, **kw), False),
    "sigmoid": (lambda z, y, **kw: sigmoid_loss(z, y, **kw), True),
    "balanced_sigmoid": (lambda z, y, **kw: balanced_sigmoid_loss(z, y, [3, 1], 10, **kw), True),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_weights_mean_is_sum_over_R(name):
    fn, sig = LOSS_CASES[name]
    logits = _t(SIG_LOGITS if sig else SM_LOGITS)
    labels = _labels([1, 2, 0])  # fg class 1, background, fg class 0
    logits = torch.cat([logits, logits[:1] * -0.7])
    l0, l1, l2 = fn(logits, labels, reduction="none").tolist()
    cw = _t([2.0, 0.5], grad=True)
    w = _t([1.0, 3.0, 0.25])
    # ROI 0: class 1 -> 0.5 * 1.0; ROI 1: background -> 1 * 3.0; ROI 2: class 0 -> 2.0 * 0.25
    expected = (0.5 * l0 + 3.0 * l1 + 0.5 * l2) / 3  # divided by R = 3, not by sum of weights
    out = fn(logits, labels, weights=w, class_weights=cw)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    total = fn(logits, labels, weights=w, class_weights=cw, reduction="sum")
    assert total.item() == pytest.approx(expected * 3, rel=1e-12)
    vec = fn(logits, labels, weights=w, class_weights=cw, reduction="none")
    assert vec.tolist() == pytest.approx([0.5 * l0, 3.0 * l1, 0.5 * l2], rel=1e-12)
    # class weights stay differentiable: d mean / d cw_c = sum_{i: y_i = c} w_i l_i / R
    out.backward()
    assert cw.grad.tolist() == pytest.approx([0.25 * l2 / 3, 1.0 * l0 / 3], rel=1e-12)


# ------------------------------------------------------------------------------------------
# Robustness: empty batch, huge logits, zero counts, gradcheck
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_empty_batch(name):
    fn, sig = LOSS_CASES[name]
    logits = torch.zeros(0, 2 if sig else 3, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.int64)
    out = fn(logits, labels, class_weights=torch.ones(2, requires_grad=True))
    assert out.dim() == 0 and out.item() == 0.0
    assert out.grad_fn is not None
    out.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 2 if sig else 3)
    assert fn(logits, labels, reduction="sum").item() == 0.0
    assert fn(logits, labels, reduction="none").shape == (0,)


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_huge_logits_finite(name):
    fn, sig = LOSS_CASES[name]
    base = (
        [[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]]
        if sig
        else [
            [1e4, -1e4, 1e4],
            [-1e4, 1e4, -1e4],
            [1e4, 1e4, -1e4],
        ]
    )
    for dtype in (torch.float32, torch.float64):
        logits = torch.tensor(base, dtype=dtype, requires_grad=True)
        out = fn(logits, _labels([1, 2, 0]))
        out.backward()
        assert torch.isfinite(out) and out.item() > 100  # wrong predictions cost ~1e4
        assert torch.isfinite(logits.grad).all()


def test_zero_count_class_finite_and_clamped():
    logits, labels = _random_case(K=3)
    labels[2] = 1  # an ROI of the zero-count class
    out = balanced_softmax_loss(logits, labels, [5, 0, 2])
    assert torch.isfinite(out)
    assert torch.allclose(out, balanced_softmax_loss(logits, labels, [5, 1, 2]))
    assert not torch.allclose(out, balanced_softmax_loss(logits, labels, [5, 0, 2], min_count=0.5))
    slogits, slabels = _random_case(K=3, sigmoid=True)
    slabels[2] = 1
    out = balanced_sigmoid_loss(slogits, slabels, [5, 0, 2], 20)
    assert torch.isfinite(out)
    assert torch.allclose(out, balanced_sigmoid_loss(slogits, slabels, [5, 1, 2], 20))
    with pytest.raises(ValueError, match="min_count"):
        balanced_softmax_loss(logits, labels, [5, 0, 2], min_count=0)


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_gradcheck_logits(name):
    fn, sig = LOSS_CASES[name]
    logits, labels = _random_case(R=4, K=2, seed=1, sigmoid=sig)
    logits.requires_grad_()
    w = _t([1.0, 2.0, 0.5, 1.5])
    cw = _t([0.7, 1.3])
    assert torch.autograd.gradcheck(lambda z: fn(z, labels), (logits,))
    assert torch.autograd.gradcheck(
        lambda z: fn(z, labels, weights=w, class_weights=cw, reduction="sum"), (logits,)
    )


def test_gradcheck_balanced_softmax_class_weights():
    logits, labels = _random_case(R=5, K=3, seed=2)
    labels[2] = 1
    cw = _t([0.8, 1.1, 1.4], grad=True)
    counts = torch.tensor([50, 5, 1])
    assert torch.autograd.gradcheck(
        lambda c: balanced_softmax_loss(logits, labels, counts, class_weights=c), (cw,)
    )
    assert torch.autograd.gradcheck(
        lambda z, c: balanced_softmax_loss(z, labels, counts, class_weights=c),
        (logits.clone().requires_grad_(), cw),
    )


# ------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------
def test_sigmoid_with_background_column_raises():
    logits = torch.zeros(2, 3)  # K + 1 columns for K = 2 counts
    with pytest.raises(ValueError, match="background") as err:
        balanced_sigmoid_loss(logits, _labels(), [3, 1], 10)
    assert "K+1" in str(err.value)


def test_softmax_shape_errors():
    with pytest.raises(ValueError, match="background"):
        balanced_softmax_loss(torch.zeros(2, 2), _labels([0, 1]), [3, 1])  # K columns
    with pytest.raises(ValueError, match="class counts"):
        balanced_softmax_loss(torch.zeros(2, 3), _labels(), [3, 1, 2])  # counts length K+1
    with pytest.raises(ValueError, match="2-D"):
        softmax_loss(torch.zeros(3), _labels())
    with pytest.raises(ValueError, match="labels"):
        softmax_loss(torch.zeros(2, 3), _labels([0, 1, 2]))  # R mismatch


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_label_range_and_reduction_errors(name):
    fn, sig = LOSS_CASES[name]
    logits = torch.zeros(2, 2 if sig else 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        fn(logits, _labels([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        fn(logits, _labels([-1, 0]))
    with pytest.raises(ValueError, match="bogus"):
        fn(logits, _labels(), reduction="bogus")
    with pytest.raises(ValueError, match="weights"):
        fn(logits, _labels(), weights=torch.ones(3))
    with pytest.raises(ValueError, match="class_weights"):
        fn(logits, _labels(), class_weights=torch.ones(3))
