"""Long-tail profiles and the official subset selection vs the official code's output."""

import json
import pathlib

import numpy as np
import pytest

from ride_jax.data import long_tail_counts, select_long_tail, shot_masks

DATA = pathlib.Path(__file__).parent / "data"
CASES = [("cifar10", 10, 5000, r) for r in (100, 50, 10)] + [
    ("cifar100", 100, 500, r) for r in (100, 50, 10)]


@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "cifar_lt_counts.npz") as f:
        return {k: f[k] for k in f.files}


def _key(name, ratio):
    return f"{name}_imb{1 / ratio:g}"


@pytest.mark.parametrize("name,classes,img_max,ratio", CASES)
def test_counts_equal_official(official, name, classes, img_max, ratio):
    counts = long_tail_counts(classes, img_max, ratio)
    np.testing.assert_array_equal(counts, official[_key(name, ratio) + "_counts"])


@pytest.mark.parametrize("name,classes,img_max,ratio", CASES)
def test_selection_equals_official(official, name, classes, img_max, ratio):
    # The selected within-class ranks depend only on the class sizes and the RNG stream,
    # not on where each class sits in the file: interleave the classes (as CIFAR does).
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(classes), img_max))
    counts = long_tail_counts(classes, img_max, ratio)
    idx = select_long_tail(labels, counts)
    key = _key(name, ratio)
    np.testing.assert_array_equal(labels[idx], official[key + "_selected_labels"])
    rank_in_class = np.empty(len(labels), np.int64)
    for c in range(classes):
        pos = np.flatnonzero(labels == c)
        rank_in_class[pos] = np.arange(len(pos))
    np.testing.assert_array_equal(rank_in_class[idx], official[key + "_selected_within_class_rank"])


def test_selection_does_not_touch_global_numpy_state():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    select_long_tail(np.repeat(np.arange(3), 10), [10, 5, 2])
    assert np.random.rand() == expected


@pytest.mark.parametrize("name,classes,img_max,ratio", CASES)
def test_shot_groups_equal_official(name, classes, img_max, ratio):
    key = _key(name, ratio)
    sizes = json.loads((DATA / "shot_splits.json").read_text())
    masks = shot_masks(long_tail_counts(classes, img_max, ratio))
    assert sum(m.astype(int) for m in masks.values()).tolist() == [1] * classes
    if key in sizes:
        assert {k: int(v.sum()) for k, v in masks.items()} == sizes[key]
        with np.load(DATA / "shot_splits.npz") as f:
            for group in ("many", "medium", "few"):
                np.testing.assert_array_equal(masks[group], f[f"{key}_{group}"])


def test_shot_group_boundaries():
    masks = shot_masks([101, 100, 20, 19])
    assert masks["many"].tolist() == [True, False, False, False]
    assert masks["medium"].tolist() == [False, True, True, False]
    assert masks["few"].tolist() == [False, False, False, True]


def test_step_profile():
    np.testing.assert_array_equal(long_tail_counts(4, 500, 10, "step"), [500, 500, 50, 50])
    np.testing.assert_array_equal(long_tail_counts(3, 100, 1), [100, 100, 100])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"ratio=0.01 .* ratio=100"):
        long_tail_counts(10, 5000, 0.01)
    with pytest.raises(ValueError, match="got 'x'"):
        long_tail_counts(10, 5000, "x")
    with pytest.raises(ValueError, match="'linear'"):
        long_tail_counts(10, 5000, 100, "linear")
    with pytest.raises(ValueError, match="no image"):
        long_tail_counts(10, 50, 100)
    with pytest.raises(ValueError, match=r"out of range \[0, 3\)"):
        select_long_tail(np.array([0, 1, 3]), [1, 1, 1])
    with pytest.raises(ValueError, match="class 1 has 1 images"):
        select_long_tail(np.array([0, 0, 1]), [2, 2])
