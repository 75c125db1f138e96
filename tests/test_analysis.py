"""ride_jax.analysis: Domingos bias / variance, hardest negatives, group tables, plots.

Expected values are worked out by hand in the small cases, or by a loop restatement of
the definitions (``_domingos_reference``) on random inputs.
"""

import collections
import math
import struct

import numpy as np
import pytest

from ride_jax import analysis
from ride_jax.analysis import (bias_variance, bias_variance_interval, bias_variance_table,
                               confusion_matrix,
                               group_means, hardest_negative_scores, histograms_by_group,
                               per_class_accuracy, per_class_means, softmax)

# many: n > 100, medium: 20 <= n <= 100, few: n < 20 (training counts).
COUNTS = np.array([500, 120, 50, 5])            # many {0, 1}, medium {2}, few {3}


def _domingos_reference(preds, labels):
    """Plain-Python restatement of the per-example definitions."""
    out = collections.defaultdict(list)
    m = len(preds)
    for i, y in enumerate(labels):
        col = [int(preds[k][i]) for k in range(m)]
        votes = collections.Counter(col)
        top = max(votes.values())
        main = min(k for k, v in votes.items() if v == top)
        bias = float(main != y)
        var = sum(p != main for p in col) / m
        loss = sum(p != y for p in col) / m
        off = [p for p in col if p != main]
        if bias == 0:
            c2 = 1.0
        else:
            c2 = -(sum(p == y for p in off) / len(off)) if off else 0.0
        for k, v in (("main_prediction", main), ("bias", bias), ("variance", var),
                     ("loss", loss), ("c2", c2)):
            out[k].append(v)
    return out


# ------------------------------------------------------------------ bias / variance


def test_all_models_agree_and_right_or_wrong():
    preds = np.array([[0, 1, 2]] * 5)
    r = bias_variance(preds, np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(r["main_prediction"], [0, 1, 2])
    for k in ("bias", "variance", "loss"):
        np.testing.assert_array_equal(r[k], [0.0, 0.0, 0.0])
    r = bias_variance(preds, np.array([1, 2, 0]), 3)
    np.testing.assert_array_equal(r["bias"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(r["variance"], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(r["loss"], [1.0, 1.0, 1.0])


def test_hand_case_m4():
    preds = np.array([[0], [0], [1], [2]])           # M=4 models, one example
    r = bias_variance(preds, np.array([0]), 3)        # label 0 = main prediction
    assert r["main_prediction"][0] == 0
    assert r["bias"][0] == 0.0
    assert r["variance"][0] == 0.5                    # 2 of 4 differ from y_m = 0
    assert r["loss"][0] == 0.5                        # 2 of 4 wrong
    assert r["c2"][0] == 1.0
    r = bias_variance(preds, np.array([1]), 3)        # label 1: y_m = 0 is wrong
    assert r["bias"][0] == 1.0
    assert r["variance"][0] == 0.5
    assert r["loss"][0] == 0.75                       # only one model predicts 1
    # P(pred = 1 | pred != 0) = 1/2 (models predicting 1 and 2).
    assert r["c2"][0] == -0.5
    assert r["bias"][0] + r["c2"][0] * r["variance"][0] == 0.75
    assert r["variance_unbiased"][0] == 0.0 and r["variance_biased"][0] == 0.5
    assert r["net_variance"][0] == -0.25
    r = bias_variance(preds, np.array([2]), 3)        # label 2, same split as label 1
    assert (r["bias"][0], r["loss"][0], r["c2"][0]) == (1.0, 0.75, -0.5)


def test_tie_goes_to_smallest_class():
    # Two votes each for 3 and 1 (and one for 0 on the second example).
    preds = np.array([[3, 3], [1, 1], [3, 0], [1, 1], [0, 3]])
    r = bias_variance(preds, np.array([3, 3]), 4)
    # ex0: 3,1,3,1,0 -> tie 3 vs 1 -> 1; ex1: 3,1,0,1,3 -> tie 3 vs 1 -> 1.
    np.testing.assert_array_equal(r["main_prediction"], [1, 1])
    np.testing.assert_array_equal(r["bias"], [1.0, 1.0])
    np.testing.assert_allclose(r["variance"], [3 / 5, 3 / 5])
    # Even M: an exact 2-2 split between 2 and 0.
    r = bias_variance(np.array([[2], [0], [2], [0]]), np.array([0]), 3)
    assert r["main_prediction"][0] == 0 and r["bias"][0] == 0.0


@pytest.mark.parametrize("m,n,c,seed", [(7, 400, 5, 0), (4, 300, 3, 1), (10, 200, 10, 2),
                                        (1, 50, 4, 3)])
def test_domingos_identity_and_reference_on_random_predictions(m, n, c, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    # Mostly-right models with noise, so bias 0 and bias 1 examples both occur.
    preds = np.where(rng.random((m, n)) < 0.5, labels[None], rng.integers(0, c, (m, n)))
    r = bias_variance(preds, labels, c)
    for k in ("main_prediction", "bias", "variance", "loss", "c2"):
        assert r[k].shape == (n,)
    np.testing.assert_allclose(r["loss"], r["bias"] + r["c2"] * r["variance"], rtol=0,
                               atol=1e-12)
    ref = _domingos_reference(preds, labels)
    np.testing.assert_array_equal(r["main_prediction"], ref["main_prediction"])
    for k in ("bias", "variance", "loss", "c2"):
        np.testing.assert_allclose(r[k], ref[k], rtol=0, atol=1e-12, err_msg=k)
    # The loss read directly off the predictions.
    np.testing.assert_allclose(r["loss"], (preds != labels[None]).mean(0), atol=1e-12)
    # Domingos's aggregates: V = V_u + V_b; net = V_u - sum over biased of |c2| V.
    assert r["variance"].mean() == pytest.approx(
        r["variance_unbiased"].mean() + r["variance_biased"].mean())
    biased = r["bias"] == 1
    assert np.all((r["c2"][biased] <= 0) & (r["c2"][biased] >= -1))
    assert np.all(r["c2"][~biased] == 1)
    if m > 1:
        assert biased.any() and (~biased).any()


def test_bias_variance_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"predictions must be a 2-D"):
        bias_variance(np.array([0, 1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"predictions out of range \[0, 2\)"):
        bias_variance(np.array([[0, 2]]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"labels out of range \[0, 2\).*-1"):
        bias_variance(np.array([[0, 1]]), np.array([0, -1]), 2)
    with pytest.raises(ValueError, match=r"labels has 3 entries"):
        bias_variance(np.array([[0, 1]]), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"predictions must hold integer.*float"):
        bias_variance(np.array([[0.0, 1.0]]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"num_classes"):
        bias_variance(np.array([[0, 1]]), np.array([0, 1]), 0)
    with pytest.raises(ValueError, match=r"M >= 1 models"):
        bias_variance(np.zeros((0, 2), int), np.array([0, 1]), 2)


# ------------------------------------------------------------------ group tables


def test_per_class_and_group_means():
    pc = per_class_means(np.array([1.0, 0.0, 0.5, 0.25, 1.0]), np.array([0, 0, 1, 2, 2]), 4)
    np.testing.assert_allclose(pc[:3], [0.5, 0.5, 0.625])
    assert np.isnan(pc[3])
    g = group_means(pc, COUNTS)
    assert g == {"many": pytest.approx(0.5), "medium": pytest.approx(0.625), "few": None}
    # Boundaries: 100 and 20 are medium, 101 many, 19 few; no NaN, all groups filled.
    g = group_means(np.array([0.1, 0.2, 0.3, 0.4]), np.array([101, 100, 20, 19]))
    assert g == {"many": pytest.approx(0.1), "medium": pytest.approx(0.25),
                 "few": pytest.approx(0.4)}
    # A group with no class at all.
    assert group_means(np.array([0.2, 0.4]), np.array([300, 200]))["few"] is None
    with pytest.raises(ValueError, match=r"per_class has 3 classes but train_counts has 4"):
        group_means(np.zeros(3), COUNTS)


def test_bias_variance_table_hand_case():
    # ex  label preds  main bias var  loss
    # 0   0     0,0    0    0    0    0
    # 1   0     1,1    1    1    0    1
    # 2   1     0,1    0    1    .5   .5    (tie 0/1 -> 0)
    # 3   2     2,3    2    0    .5   .5    (tie 2/3 -> 2)
    # 4   2     3,3    3    1    0    1
    labels = np.array([0, 0, 1, 2, 2])
    preds = np.array([[0, 1, 0, 2, 3], [0, 1, 1, 3, 3]])
    t = bias_variance_table(preds, labels, COUNTS)
    # per class: c0 (b .5, v 0, l .5), c1 (1, .5, .5), c2 (.5, .25, .75), c3 no examples
    assert t["many"] == {"bias": pytest.approx(0.75), "variance": pytest.approx(0.25),
                         "loss": pytest.approx(0.5)}
    assert t["medium"] == {"bias": pytest.approx(0.5), "variance": pytest.approx(0.25),
                           "loss": pytest.approx(0.75)}
    assert t["few"] == {"bias": None, "variance": None, "loss": None}
    # 'all' is the class mean over classes 0..2 (the example mean of bias would be 3/5).
    assert t["all"] == {"bias": pytest.approx(2 / 3), "variance": pytest.approx(0.25),
                        "loss": pytest.approx(1.75 / 3)}


def test_bias_variance_interval_identical_models_is_a_point():
    labels = np.array([0, 0, 1, 2, 2])
    preds = np.tile(np.array([[0, 1, 0, 2, 3]]), (3, 1))
    t = bias_variance_table(preds, labels, COUNTS)
    ci = bias_variance_interval(preds, labels, COUNTS, samples=50)
    for split in ("all", "many", "medium"):
        for key in ("bias", "variance", "loss"):
            assert ci[split][key] == [pytest.approx(t[split][key])] * 2
    assert ci["few"] is None                     # no test example in the few split


def test_bias_variance_interval_hand_case():
    # The two models of the table hand case. A draw is (m0, m1) / (m1, m0) (the table,
    # p = 1/2), (m0, m0) or (m1, m1) (one model twice: variance 0, p = 1/4 each).
    # many bias: .75 for (m0,m1), (m0,m0); .25 for (m1,m1) -> 5%..95% = [.25, .75].
    labels = np.array([0, 0, 1, 2, 2])
    preds = np.array([[0, 1, 0, 2, 3], [0, 1, 1, 3, 3]])
    ci = bias_variance_interval(preds, labels, COUNTS, samples=400, seed=3)
    assert ci["many"]["bias"] == [pytest.approx(0.25), pytest.approx(0.75)]
    assert ci["many"]["variance"] == [pytest.approx(0.0), pytest.approx(0.25)]
    assert ci["medium"]["variance"] == [pytest.approx(0.0), pytest.approx(0.25)]
    assert bias_variance_interval(preds, labels, COUNTS, samples=400, seed=3) == ci
    # a narrower level on the same draws cannot widen the interval
    narrow = bias_variance_interval(preds, labels, COUNTS, samples=400, seed=3, level=0.2)
    assert narrow["many"]["bias"][0] >= ci["many"]["bias"][0]
    assert narrow["many"]["bias"][1] <= ci["many"]["bias"][1]


@pytest.mark.parametrize("kwargs,words", [({"samples": 0}, "samples=0"),
                                          ({"level": 1.5}, "level=1.5")])
def test_bias_variance_interval_rejects_bad_inputs(kwargs, words):
    preds = np.array([[0, 1], [1, 1]])
    with pytest.raises(ValueError, match=words):
        bias_variance_interval(preds, np.array([0, 1]), COUNTS, **kwargs)
    with pytest.raises(ValueError, match="M >= 2"):
        bias_variance_interval(preds[:1], np.array([0, 1]), COUNTS)


# ------------------------------------------------------------------ hardest negatives


def test_softmax():
    z = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    np.testing.assert_allclose(softmax(z), [[0.25, 0.75], [0.5, 0.5]], atol=1e-12)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 6)) * 5
    e = np.exp(z)
    np.testing.assert_allclose(softmax(z), e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(softmax(z, axis=0), e / e.sum(0, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="logits must be finite"):
        softmax(np.array([[0.0, np.nan]]))


def test_hardest_negative_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(hardest_negative_scores(probs, np.array([0, 2])), [0.2, 0.3])
    np.testing.assert_allclose(hardest_negative_scores(probs, np.array([1, 1])), [0.7, 0.6])
    # A tie between the true class and a wrong class still scores the wrong one.
    s = hardest_negative_scores(np.array([[0.5, 0.5]]), np.array([0]))
    np.testing.assert_allclose(s, [0.5])


def test_hardest_negative_rejects_invalid_probs():
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match=r"rows must sum to 1.*row 1.*softmax"):
        hardest_negative_scores(np.array([[0.5, 0.5], [0.3, 0.3]]), labels)
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\].*-0.5"):
        hardest_negative_scores(np.array([[0.5, 0.5], [1.5, -0.5]]), labels)
    with pytest.raises(ValueError, match=r"sum to 1.*softmax"):
        hardest_negative_scores(np.array([[0.6, 0.6], [0.5, 0.5]]), labels)
    with pytest.raises(ValueError, match=r"probs must be a 2-D"):
        hardest_negative_scores(np.array([0.5, 0.5]), labels)
    with pytest.raises(ValueError, match=r"C >= 2"):
        hardest_negative_scores(np.ones((2, 1)), labels)
    with pytest.raises(ValueError, match=r"labels out of range \[0, 2\)"):
        hardest_negative_scores(np.full((2, 2), 0.5), np.array([0, 2]))
    # Logits are caught even when some rows happen to look fine.
    with pytest.raises(ValueError, match=r"probs"):
        hardest_negative_scores(np.array([[3.0, -1.0], [0.2, 0.8]]), labels)


def test_histograms_by_group():
    scores = np.array([0.1, 0.2, 0.7, 0.9, 0.4])
    labels = np.array([0, 1, 2, 2, 0])
    h = histograms_by_group(scores, labels, COUNTS, bins=2)
    assert set(h) == {"all", "many", "medium", "few"}
    np.testing.assert_array_equal(h["all"][0], [3, 2])
    np.testing.assert_array_equal(h["many"][0], [3, 0])     # classes 0, 1
    np.testing.assert_array_equal(h["medium"][0], [0, 2])   # class 2
    np.testing.assert_array_equal(h["few"][0], [0, 0])      # class 3: no examples
    np.testing.assert_allclose(h["all"][1], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="bins"):
        histograms_by_group(scores, labels, COUNTS, bins=0)
    with pytest.raises(ValueError, match="range"):
        histograms_by_group(scores, labels, COUNTS, range=(1.0, 0.0))


# ------------------------------------------------------------------ accuracy / confusion


def test_confusion_matrix_and_per_class_accuracy():
    preds = np.array([0, 1, 1, 2, 0])
    labels = np.array([0, 1, 2, 2, 2])
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 3),
                                  [[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    acc = per_class_accuracy(preds, labels, 4)
    np.testing.assert_allclose(acc[:3], [1.0, 1.0, 1 / 3])
    assert np.isnan(acc[3])
    assert confusion_matrix(preds, labels, 4).dtype == np.int64


def test_accuracy_rejects_bad_labels():
    preds = np.array([0, 1])
    with pytest.raises(ValueError, match=r"labels out of range \[0, 2\).*\[5\]"):
        confusion_matrix(preds, np.array([0, 5]), 2)
    with pytest.raises(ValueError, match=r"labels out of range"):
        per_class_accuracy(preds, np.array([-1, 0]), 2)
    with pytest.raises(ValueError, match=r"predictions out of range \[0, 2\)"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"labels must hold integer"):
        per_class_accuracy(preds, np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"labels has 3 entries"):
        confusion_matrix(preds, np.array([0, 1, 1]), 2)


# ------------------------------------------------------------------ plots


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    counts = np.array([500, 300, 150, 90, 40, 25, 12, 5])
    c = len(counts)
    labels = np.repeat(np.arange(c), 10)[:-10]               # last class: no test example
    preds = np.where(rng.random(len(labels)) < 0.6, labels, rng.integers(0, c, len(labels)))
    acc = per_class_accuracy(preds, labels, c)
    probs = softmax(rng.standard_normal((len(labels), c)))
    hist = histograms_by_group(hardest_negative_scores(probs, labels), labels, counts)
    shape = (5, len(labels))
    mpreds = np.where(rng.random(shape) < 0.6, labels, rng.integers(0, c, shape))
    t1 = bias_variance_table(mpreds, labels, counts)
    t2 = bias_variance_table(mpreds[::-1][:3], labels, np.array([500] * 4 + [50] * 4))
    assert t2["few"]["bias"] is None
    usage = rng.integers(0, 5, (3, c))
    usage[:, -1] = 0
    written = [
        analysis.plot_accuracy_vs_count(acc, counts, tmp_path / "acc.png", title="acc"),
        analysis.plot_hardest_negative_histograms(hist, tmp_path / "hn.png"),
        analysis.plot_bias_variance({"CE": t1, "RIDE": t2}, tmp_path / "bv.png"),
        analysis.plot_confusion_matrix(confusion_matrix(preds, labels, c), tmp_path / "cm.png",
                                       class_names=[f"c{i}" for i in range(c)]),
        analysis.plot_expert_usage(usage, counts, str(tmp_path / "usage.png")),
    ]
    for path, name in zip(written, ("acc", "hn", "bv", "cm", "usage")):
        assert isinstance(path, str) and path.endswith(f"{name}.png")
        assert _png_size(path) == (640, 480), name


def test_plots_reject_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="square"):
        analysis.plot_confusion_matrix(np.zeros((2, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"usage must be \[E, C\]"):
        analysis.plot_expert_usage(np.zeros((2, 3)), np.array([10, 20]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="per_class_acc has 2 classes"):
        analysis.plot_accuracy_vs_count(np.zeros(2), np.array([1, 2, 3]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="tables"):
        analysis.plot_bias_variance({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_public_api():
    for name in analysis.__all__:
        assert hasattr(analysis, name), name
    assert analysis.FIGSIZE[0] * analysis.DPI == 640 and analysis.FIGSIZE[1] * analysis.DPI == 480
