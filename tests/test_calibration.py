"""Top-label expected calibration error (Guo et al. 2017) in ride_jax.metrics: host form,
jittable per-bin counts accumulated over batches, per shot group, reliability diagram."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import metrics
from ride_jax.data.long_tail import shot_masks
from ride_jax.metrics import (add_counts, calibration_counts, ece_from_counts,
                              expected_calibration_error, group_calibration_counts,
                              group_ece, reliability_diagram)

# 5 examples, 4 classes, 3 bins (0, 1/3], (1/3, 2/3], (2/3, 1]:
#   ex  probs                      conf  pred label  correct  bin
#   0   [.25, .25, .25, .25]       .25   0    0      1        0
#   1   [.5,  .3,  .1,  .1 ]       .5    0    0      1        1
#   2   [.1,  .6,  .2,  .1 ]       .6    1    2      0        1
#   3   [.9,  .05, .05, 0  ]       .9    0    0      1        2
#   4   [.1,  .1,  .8,  0  ]       .8    2    3      0        2
# bin 0: n=1 acc 1  conf .25 -> 1/5 * .75 = .15
# bin 1: n=2 acc .5 conf .55 -> 2/5 * .05 = .02
# bin 2: n=2 acc .5 conf .85 -> 2/5 * .35 = .14
# ECE = .31
HAND_PROBS = np.array([[.25, .25, .25, .25], [.5, .3, .1, .1], [.1, .6, .2, .1],
                       [.9, .05, .05, 0.], [.1, .1, .8, 0.]])
HAND_LABELS = np.array([0, 0, 2, 0, 3])


def _random(n, c, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 4, size=(n, 1))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # labels correlated with the prediction so that accuracy is neither 0 nor 1
    labels = np.where(rng.uniform(size=n) < 0.6, probs.argmax(-1), rng.integers(0, c, n))
    return probs, labels


def _reference_ece(probs, labels, m):
    """Loop over bins, written independently: (k/M, (k+1)/M], 0 into the first bin."""
    conf, pred = probs.max(-1), probs.argmax(-1)
    total = 0.0
    for k in range(m):
        lo, hi = k / m, (k + 1) / m
        sel = (conf > lo) & (conf <= hi)
        if k == 0:
            sel |= conf == 0
        if sel.any():
            total += sel.sum() / len(conf) * abs((pred[sel] == labels[sel]).mean()
                                                 - conf[sel].mean())
    return total


def test_hand_computed_example():
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, num_bins=3) \
        == pytest.approx(0.31, abs=1e-12)
    counts = calibration_counts(HAND_PROBS.astype(np.float32), HAND_LABELS, num_bins=3)
    np.testing.assert_array_equal(counts["count"], [1, 2, 2])
    np.testing.assert_array_equal(counts["correct"], [1, 1, 1])
    np.testing.assert_allclose(counts["confidence_sum"], [.25, 1.1, 1.7], rtol=1e-6)
    assert ece_from_counts(counts) == pytest.approx(0.31, abs=1e-6)


def test_hand_computed_one_bin_is_accuracy_gap():
    # One bin: |mean acc - mean conf| = |3/5 - (.25+.5+.6+.9+.8)/5| = |.6 - .61| = .01
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, num_bins=1) \
        == pytest.approx(0.01, abs=1e-12)


@pytest.mark.parametrize("m", [1, 3, 10, 15, 20])
def test_matches_independent_reference(m):
    probs, labels = _random(500, 7, seed=m)
    assert expected_calibration_error(probs, labels, m) \
        == pytest.approx(_reference_ece(probs, labels, m), abs=1e-12)


def test_perfectly_calibrated_is_zero():
    rows, labels = [], []
    # conf .8: 10 examples, 8 correct; conf .6: 5 examples, 3 correct; conf 1.0: 2, all right
    for conf, n, n_right in [(.8, 10, 8), (.6, 5, 3), (1.0, 2, 2)]:
        rows += [[conf, 1 - conf]] * n
        labels += [0] * n_right + [1] * (n - n_right)
    probs, labels = np.array(rows), np.array(labels)
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.0, abs=1e-12)
    assert ece_from_counts(calibration_counts(probs, labels, 10)) == pytest.approx(0.0, abs=1e-6)
    # ... and shifting one label breaks it: conf .8 bin now 7/10 right -> 10/17 * .1
    labels[0] = 1
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(1 / 17, abs=1e-12)


def test_always_wrong_confident_is_mean_confidence():
    probs = np.array([[.9, .1]] * 4 + [[.3, .7]] * 6)
    labels = np.array([1] * 4 + [0] * 6)
    # every bin has accuracy 0, so ECE = mean confidence = (4 * .9 + 6 * .7) / 10 = .78
    for m in (1, 5, 15):
        assert expected_calibration_error(probs, labels, m) == pytest.approx(0.78, abs=1e-12)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confidence_on_an_interior_edge_goes_left(dtype):
    # 5 bins, edge .4: conf .4 (right) must be in (.2, .4], alone -> |1 - .4| = .6;
    # conf .5 (wrong) in (.4, .6] -> |0 - .5| = .5.  ECE = (.6 + .5) / 2 = .55.
    # (Were .4 put in (.4, .6] with .5: |.5 - .45| = .05.)
    probs = np.array([[.4, .3, .3], [.5, .25, .25]], dtype)
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels, 5) == pytest.approx(0.55, abs=1e-6)
    counts = calibration_counts(probs, labels, 5)
    np.testing.assert_array_equal(counts["count"], [0, 1, 1, 0, 0])
    assert ece_from_counts(counts) == pytest.approx(0.55, abs=1e-6)


def test_uniform_row_on_the_first_edge():
    # 3 classes uniform: conf exactly 1/3 = first edge of 3 bins -> bin 0
    probs = np.full((1, 3), 1 / 3)
    counts = calibration_counts(probs.astype(np.float32), np.array([0]), 3)
    np.testing.assert_array_equal(counts["count"], [1, 0, 0])
    np.testing.assert_array_equal(
        metrics._bin_sums(np, probs, np.array([0]), 3, None, None, np.float64)["count"],
        [1, 0, 0])


def test_confidence_one_and_zero():
    # conf 1.0 (right) shares the last bin (.9, 1] with conf .95 (wrong):
    # acc .5, conf .975 -> ECE .475 (a separate bin for 1.0 would give (0 + .95) / 2)
    probs = np.array([[1.0, 0.0], [.95, .05]])
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(0.475, abs=1e-12)
    counts = calibration_counts(probs, labels, 10)
    assert float(counts["count"][-1]) == 2 and float(counts["count"].sum()) == 2
    # conf exactly 0 (an all-zero row) is counted in the first bin
    counts = calibration_counts(np.zeros((1, 2)), np.array([0]), 4)
    np.testing.assert_array_equal(counts["count"], [1, 0, 0, 0])


def test_mask_excludes_padding():
    probs, labels = _random(40, 5, seed=0)
    pad_probs = np.concatenate([probs, np.full((8, 5), .9)])   # garbage, even not rows
    pad_labels = np.concatenate([labels, np.full(8, 99)])      # out of range, ignored
    mask = np.arange(48) < 40
    want = expected_calibration_error(probs, labels, 15)
    assert expected_calibration_error(pad_probs, pad_labels, 15, mask=mask) \
        == pytest.approx(want, abs=1e-12)
    counts = calibration_counts(pad_probs.astype(np.float32), pad_labels, 15, mask=mask)
    assert float(counts["count"].sum()) == 40
    assert ece_from_counts(counts) == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="no example"):
        expected_calibration_error(probs, labels, 15, mask=np.zeros(40, bool))


def test_counts_accumulated_over_batches_equal_one_shot():
    probs, labels = _random(1000, 10, seed=3)
    probs = probs.astype(np.float32)
    step = jax.jit(lambda p, y, m: calibration_counts(p, y, 15, mask=m))
    total, b = None, 128
    for i in range(0, 1000, b):
        p, y = probs[i:i + b], labels[i:i + b]
        n = len(y)
        p = np.concatenate([p, np.zeros((b - n, 10), np.float32)])   # pad to a fixed batch
        y = np.concatenate([y, np.zeros(b - n, y.dtype)])
        total = add_counts(total, step(p, y, np.arange(b) < n))
    one_shot = calibration_counts(probs, labels, 15)
    np.testing.assert_array_equal(total["count"], one_shot["count"])
    np.testing.assert_array_equal(total["correct"], one_shot["correct"])
    np.testing.assert_allclose(total["confidence_sum"], one_shot["confidence_sum"], rtol=1e-5)
    host = expected_calibration_error(probs, labels, 15)
    assert host > 0.01   # a non-trivial value to agree on
    assert ece_from_counts(total) == pytest.approx(host, abs=1e-5)
    assert ece_from_counts(one_shot) == pytest.approx(host, abs=1e-5)


def test_per_group_equals_ece_on_subset():
    c = 12
    train_counts = np.array([500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 3, 1])
    groups = shot_masks(train_counts)
    probs, labels = _random(600, c, seed=7)
    got = group_ece(probs, labels, train_counts, 10)
    assert got["all"] == pytest.approx(expected_calibration_error(probs, labels, 10))
    jitted = jax.jit(lambda p, y: group_calibration_counts(p, y, groups, 10))
    dev = jitted(probs.astype(np.float32), labels)
    values = set()
    for name, cm in groups.items():
        sel = cm[labels]
        want = expected_calibration_error(probs[sel], labels[sel], 10)
        values.add(round(want, 9))
        assert got[name] == pytest.approx(want, abs=1e-12)
        assert expected_calibration_error(probs, labels, 10, class_mask=cm) \
            == pytest.approx(want, abs=1e-12)
        assert float(dev[name]["count"].sum()) == sel.sum()
        assert ece_from_counts(dev[name]) == pytest.approx(want, abs=1e-5)
    assert len(values) == 3   # the groups really differ
    # a group without test examples -> None
    few_free = labels[~groups["few"][labels]]
    probs_ff = probs[~groups["few"][labels]]
    assert group_ece(probs_ff, few_free, train_counts, 10)["few"] is None


def test_errors():
    p, y = HAND_PROBS, HAND_LABELS
    with pytest.raises(ValueError, match="num_bins must be an int >= 1, got 0"):
        expected_calibration_error(p, y, 0)
    with pytest.raises(ValueError, match="num_bins"):
        calibration_counts(p, y, -3)
    with pytest.raises(ValueError, match=r"labels must be \[N\] with N = 5.*got shape \(4,\)"):
        expected_calibration_error(p, y[:4])
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        calibration_counts(p, y[:4], 3)
    with pytest.raises(ValueError, match=r"probs must be \[N, C\]"):
        expected_calibration_error(p[0], y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 4"):
        expected_calibration_error(p, np.array([0, 0, 2, 0, 4]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got -1"):
        calibration_counts(p, np.array([0, -1, 2, 0, 3]), 3)
    with pytest.raises(ValueError, match="labels must be integers"):
        expected_calibration_error(p, y.astype(float))
    logits = p.copy()
    logits[1, 2] = -1.5
    with pytest.raises(ValueError, match=r"probs must be probabilities.*got -1.5"):
        expected_calibration_error(logits, y)
    logits[1, 2], logits[3, 0] = .1, 2.5
    with pytest.raises(ValueError, match=r"probs must be probabilities.*got 2.5"):
        calibration_counts(logits, y, 3)
    with pytest.raises(ValueError, match=r"mask must be \[N\]"):
        expected_calibration_error(p, y, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"class_mask must be \[C\] with C = 4"):
        expected_calibration_error(p, y, class_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="no example"):
        ece_from_counts({k: np.zeros(3) for k in ("count", "confidence_sum", "correct")})


def test_jit_with_traced_inputs_skips_value_checks():
    # under jit labels are not concrete: shape checks still run, value checks do not
    f = jax.jit(lambda p, y: calibration_counts(p, y, 3))
    got = f(jnp.asarray(HAND_PROBS, jnp.float32), jnp.asarray(HAND_LABELS))
    assert ece_from_counts(got) == pytest.approx(0.31, abs=1e-6)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        f(jnp.asarray(HAND_PROBS, jnp.float32), jnp.asarray(HAND_LABELS[:3]))


def test_reliability_diagram_png(tmp_path):
    probs, labels = _random(300, 5, seed=1)
    counts = calibration_counts(probs, labels, 10)
    path = reliability_diagram(counts, tmp_path / "rel.png", title="test")
    assert path == str(tmp_path / "rel.png")
    data = (tmp_path / "rel.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (480, 640)
    assert img[..., :3].std() > 0.05    # something was drawn
    with pytest.raises(ValueError, match="no example"):
        reliability_diagram({k: np.zeros(10) for k in counts}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
