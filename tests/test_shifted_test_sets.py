"""Test-agnostic shifted test sets (SADE): generated CIFAR subsets and the shipped lists.

Expected values come from a NumPy restatement of SADE's ``imbalance_cifar.py``
(``IMBALANCECIFAR100(train=False, imb_factor=..., reverse=...)``, written out below) and
from the numbers of sade-spec §5.2 / §5.3, never from the code under test.
"""

import gzip
import importlib.resources
import json
import os
import pathlib
import tomllib

import numpy as np
import pytest

from ride_jax.data.long_tail import (INAT_SHIFTS, SHIFTS, parse_shift, shift_name,
                                     shift_prior, shifted_counts, shifted_test_indices)
from ride_jax.data.test_agnostic import DATASETS, shift_names, shifted_test_list

REPO = pathlib.Path(__file__).resolve().parent.parent
LISTS = REPO / "ride_jax" / "data" / "lists"

# SADE test_all_cifar.py: ratio -> imb_factor, as literals.
IMB_FACTOR = {50: 0.02, 25: 0.04, 10: 0.1, 5: 0.2, 2: 0.5, 1: 1.0}
RATIOS = tuple(IMB_FACTOR)


def official_subset(targets, imb_factor, reverse, rand_number=0):
    """SADE/LDAM-DRW ``IMBALANCECIFAR10.__init__`` on ``targets``: the kept indices."""
    np.random.seed(rand_number)
    targets_np = np.array(targets, dtype=np.int64)
    cls_num = len(np.unique(targets_np))
    img_max = len(targets_np) / cls_num
    img_num_per_cls = []
    for cls_idx in range(cls_num):
        if reverse:
            num = img_max * (imb_factor ** ((cls_num - 1 - cls_idx) / (cls_num - 1.0)))
        else:
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
        img_num_per_cls.append(int(num))
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected)


@pytest.fixture
def keep_global_rng():
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def balanced(classes, per_class, order):
    y = np.repeat(np.arange(classes), per_class)
    if order == "interleaved":  # CIFAR's test file mixes the classes
        y = np.random.default_rng(7).permutation(y)
    return y


LABEL_SETS = [(10, 1000, "sorted"), (10, 1000, "interleaved"),
              (100, 100, "sorted"), (100, 100, "interleaved")]


# ------------------------------------------------------------------- shifted_test_indices

@pytest.mark.parametrize("classes,per_class,order", LABEL_SETS)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_indices_equal_official(keep_global_rng, classes, per_class, order, direction, ratio):
    y = balanced(classes, per_class, order)
    expected = official_subset(y, IMB_FACTOR[ratio], reverse=direction == "backward")
    got = shifted_test_indices(y, ratio, direction)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_seed_is_used(keep_global_rng):
    y = balanced(100, 100, "interleaved")
    np.testing.assert_array_equal(shifted_test_indices(y, 10, "forward", seed=3),
                                  official_subset(y, 0.1, False, rand_number=3))
    assert not np.array_equal(shifted_test_indices(y, 10, "forward", seed=3),
                              shifted_test_indices(y, 10, "forward", seed=0))


def test_global_rng_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    shifted_test_indices(balanced(10, 20, "sorted"), 5, "forward")
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# sade-spec §5.2: subset sizes of the 10,000-image CIFAR-100 test set.
CIFAR100_SIZES = {50: 2486, 25: 2956, 10: 3876, 5: 4932, 2: 7166, 1: 10000}


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_cifar100_sizes_and_class_counts(direction, ratio):
    y = balanced(100, 100, "interleaved")
    idx = shifted_test_indices(y, ratio, direction)
    assert len(idx) == CIFAR100_SIZES[ratio]
    assert len(np.unique(idx)) == len(idx)
    per_class = np.bincount(y[idx], minlength=100)
    if ratio == 50:  # "forward-50 is 100 / 96 / 92 ... 2 / 2 / 2; backward the mirror"
        ends = [100, 96, 92, 2, 2, 2] if direction == "forward" else [2, 2, 2, 92, 96, 100]
        assert per_class[[0, 1, 2, 97, 98, 99]].tolist() == ends
    # class-sorted: class 0's images first
    assert np.all(np.diff(y[idx]) >= 0)


@pytest.mark.parametrize("classes,per_class,order", LABEL_SETS)
def test_nested_prefixes(classes, per_class, order):
    y = balanced(classes, per_class, order)
    full = shifted_test_indices(y, 1, "forward")
    perm = {c: full[y[full] == c] for c in range(classes)}
    for direction in ("forward", "backward"):
        previous = None
        for ratio in (50, 25, 10, 5, 2, 1):  # growing subsets
            idx = shifted_test_indices(y, ratio, direction)
            for c in range(classes):
                mine = idx[y[idx] == c]
                np.testing.assert_array_equal(mine, perm[c][:len(mine)])
            if previous is not None:
                assert set(previous) <= set(idx.tolist())
            previous = idx.tolist()


@pytest.mark.parametrize("classes,per_class,order", LABEL_SETS)
def test_ratio_one_is_every_index(classes, per_class, order):
    y = balanced(classes, per_class, order)
    for direction in ("forward", "backward", "uniform"):
        idx = shifted_test_indices(y, 1, direction)
        np.testing.assert_array_equal(np.sort(idx), np.arange(len(y)))
    np.testing.assert_array_equal(shifted_test_indices(y, 1, "uniform"),
                                  shifted_test_indices(y, 1.0, "backward"))


def test_num_classes_and_small_sets():
    y = balanced(3, 4, "sorted")
    # n_c = int(4 * (1/50) ** (c/2)) = 4, 0, 0: zero-image classes are allowed
    assert np.all(y[shifted_test_indices(y, 50, "forward")] == 0)
    assert len(shifted_test_indices(y, 50, "forward")) == 4
    assert np.all(y[shifted_test_indices(y, 50, "backward")] == 2)
    with pytest.raises(ValueError, match=r"balanced.*0 in class 3"):
        shifted_test_indices(y, 2, "forward", num_classes=4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(direction="sideways"), r"direction='sideways'.*valid choices.*forward"),
    (dict(direction="Forward"), r"valid choices"),
    (dict(ratio=0.02), r"ratio=0.02.*ratio=50"),
    (dict(ratio=0), r"ratio=0 is not a valid"),
    (dict(ratio=float("nan")), r"not a valid"),
    (dict(ratio="ten"), r"ratio must be a number"),
    (dict(direction="uniform", ratio=10), r"'uniform' needs ratio=1"),
    (dict(labels=np.array([0, 0, 1])), r"balanced.*got 1 in class 1 and 2 in class 0"),
    (dict(labels=np.array([0, 0, 0])), r"C >= 2.*C=1"),
    (dict(labels=np.zeros((2, 2), int)), r"1-D integer.*\(2, 2\)"),
    (dict(labels=np.array([0.0, 1.0])), r"1-D integer.*float64"),
    (dict(labels=np.array([], int)), r"non-empty"),
    (dict(labels=np.array([-1, 0, 1])), r"labels must be >= 0, got -1"),
    (dict(num_classes=1), r"num_classes=1 must be an integer >= labels.max\(\) \+ 1 = 2"),
])
def test_errors(kwargs, match):
    args = dict(labels=np.array([0, 1, 0, 1]), ratio=2, direction="forward")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        shifted_test_indices(args.pop("labels"), args.pop("ratio"), args.pop("direction"),
                             **args)


# ------------------------------------------------------------------- names, counts, prior

def test_shift_names():
    assert SHIFTS == ("forward50", "forward25", "forward10", "forward5", "forward2",
                      "uniform", "backward2", "backward5", "backward10", "backward25",
                      "backward50")
    assert INAT_SHIFTS == ("forward3", "forward2", "uniform", "backward2", "backward3")
    assert [parse_shift(n) for n in INAT_SHIFTS] == [
        ("forward", 3.0), ("forward", 2.0), ("uniform", 1.0), ("backward", 2.0),
        ("backward", 3.0)]
    assert parse_shift("backward50") == ("backward", 50.0)
    assert parse_shift("forward1.5") == ("forward", 1.5)
    for n in SHIFTS + INAT_SHIFTS:
        assert shift_name(*parse_shift(n)) == n
    assert shift_name("backward", 1) == "uniform"
    assert shift_names("inat2018") == INAT_SHIFTS
    assert shift_names("imagenet_lt") == shift_names("places_lt") == SHIFTS


@pytest.mark.parametrize("bad", ["sideways10", "forward", "forward0.5", "forwardx",
                                 "uniform2", "", 50, None])
def test_parse_shift_errors(bad):
    with pytest.raises(ValueError, match="forward50"):
        parse_shift(bad)


def test_shifted_counts():
    fwd = shifted_counts(100, 100, 50, "forward")
    assert fwd[:3].tolist() == [100, 96, 92] and fwd[-3:].tolist() == [2, 2, 2]
    np.testing.assert_array_equal(shifted_counts(100, 100, 50, "backward"), fwd[::-1])
    for r, total in CIFAR100_SIZES.items():
        assert shifted_counts(100, 100, r, "forward").sum() == total
    assert shifted_counts(4, 10, 1, "uniform").tolist() == [10, 10, 10, 10]
    # ranks from training counts: class 2 most frequent, then 0, 3, 1 (0 and 3 tie)
    tc = [50, 5, 100, 50]
    # by rank: int(8 * (1/8) ** (k/3)) = 8, 4, 2, 1
    assert shifted_counts(4, 8, 8, "forward", train_counts=tc).tolist() == [4, 1, 8, 2]
    assert shifted_counts(4, 8, 8, "backward", train_counts=tc).tolist() == [2, 8, 1, 4]
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        shifted_counts(1, 10, 2, "forward")
    with pytest.raises(ValueError, match=r"train_counts must have shape \(4,\)"):
        shifted_counts(4, 10, 2, "forward", train_counts=[1, 2])


def test_shift_prior():
    y = balanced(100, 100, "interleaved")
    idx = shifted_test_indices(y, 50, "forward")
    p = shift_prior(labels=y[idx], num_classes=100)
    assert p.shape == (100,) and p.dtype == np.float64
    assert p[0] == pytest.approx(100 / 2486) and p[99] == pytest.approx(2 / 2486)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(shift_prior(counts=[3, 1, 0, 0]), [0.75, 0.25, 0, 0])
    # an empty tail class still gets its slot
    assert shift_prior(labels=np.array([0, 0, 1]), num_classes=4).tolist() == [2 / 3, 1 / 3,
                                                                              0, 0]
    for kwargs, match in [(dict(), "exactly one"), (dict(labels=[0], counts=[1]), "both"),
                          (dict(labels=np.array([0, 1])), "needs num_classes"),
                          (dict(labels=np.array([0, 5]), num_classes=3), r"\[0, 3\)"),
                          (dict(counts=[0, 0]), "sum to 0"),
                          (dict(counts=[1, -1]), ">= 0")]:
        with pytest.raises(ValueError, match=match):
            shift_prior(**kwargs)


# ------------------------------------------------------------------- shipped lists

# sade-spec §5.3: lines of every shipped list.
SIZES = {
    "imagenet_lt": {50: 12058, 25: 14437, 10: 19059, 5: 24365, 2: 35574, 1: 50000},
    "places_lt": {50: 8989, 25: 10727, 10: 14103, 5: 17970, 2: 26155, 1: 36500},
    "inat2018": {"forward3": 11147, "backward3": 11137, "forward2": 12906,
                 "backward2": 12906, "uniform": 24426},
}
# (per-class size N of the balanced set, C)
SHAPE = {"imagenet_lt": (50, 1000), "places_lt": (100, 365), "inat2018": (3, 8142)}
ALL_LISTS = [(d, n) for d in ("imagenet_lt", "places_lt") for n in SHIFTS] + [
    ("inat2018", n) for n in INAT_SHIFTS]


def expected_size(dataset, name):
    if dataset == "inat2018":
        return SIZES[dataset][name]
    return SIZES[dataset][1 if name == "uniform" else int(name.lstrip("forwardbackward"))]


def formula_by_rank(per_class, classes, ratio):
    """sade-spec §5.3: floor(N * (1/ratio) ** (k / (C - 1))) for rank k = 0..C-1."""
    return np.array([int(per_class * (1 / ratio) ** (k / (classes - 1)))
                     for k in range(classes)])


def train_counts(dataset):
    if dataset == "imagenet_lt":
        return np.array(json.loads((LISTS / "ImageNet_LT_train_cls_freq.json").read_text()))
    with gzip.open(LISTS / "Places_LT_train.txt.gz", "rt") as f:
        return np.bincount([int(line.split()[1]) for line in f if line.strip()],
                           minlength=365)


@pytest.mark.parametrize("dataset,name", ALL_LISTS)
def test_shipped_list(dataset, name):
    paths, labels = shifted_test_list(dataset, name)
    per_class, classes = SHAPE[dataset]
    assert len(paths) == len(labels) == expected_size(dataset, name)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < classes
    assert len(set(paths)) == len(paths)
    counts = np.bincount(labels, minlength=classes)
    if name == "uniform":
        assert counts.tolist() == [per_class] * classes
        return
    direction, ratio = name.rstrip("0123456789"), int(name.lstrip("forwardbackward"))
    sorted_counts = np.sort(counts)[::-1]
    formula = formula_by_rank(per_class, classes, ratio)
    if (dataset, ratio) == ("inat2018", 3):
        # shipped short of the formula: 1 (forward) / 11 (backward) images, 1 / 8 classes empty
        assert np.all(sorted_counts <= formula)
        assert formula.sum() - counts.sum() == {"forward": 1, "backward": 11}[direction]
        assert (counts == 0).sum() == {"forward": 1, "backward": 8}[direction]
    else:
        np.testing.assert_array_equal(sorted_counts, formula)
    # a subset of the uniform (test) list, with the same labels
    test_paths, test_labels = shifted_test_list(dataset, "uniform")
    label_of = dict(zip(test_paths, test_labels.tolist()))
    assert all(label_of.get(p) == c for p, c in zip(paths, labels.tolist()))
    if dataset != "inat2018":
        # ranks follow training frequency: a more frequent class never gets fewer images
        # (forward) / more images (backward) than a less frequent one
        tc = train_counts(dataset)
        sign = 1 if direction == "forward" else -1
        for level in np.unique(tc)[:-1]:
            lo, hi = sign * counts[tc <= level], sign * counts[tc > level]
            assert lo.max() <= hi.min(), (level, lo.max(), hi.min())


def test_forward_backward_are_mirrors():
    # the same rank-reversed counts: class c's forward count at rank k equals the
    # backward count of the class at rank C - 1 - k, so the sorted counts agree
    for dataset, ratio in [("imagenet_lt", 50), ("places_lt", 10), ("inat2018", 2)]:
        f = np.bincount(shifted_test_list(dataset, f"forward{ratio}")[1],
                        minlength=SHAPE[dataset][1])
        b = np.bincount(shifted_test_list(dataset, f"backward{ratio}")[1],
                        minlength=SHAPE[dataset][1])
        np.testing.assert_array_equal(np.sort(f), np.sort(b))
        # anti-monotone: a class with more forward images never has more backward ones
        for level in np.unique(f)[:-1]:
            assert b[f > level].max() <= b[f <= level].min(), (dataset, level)


def test_places_path_styles():
    test_paths, test_labels = shifted_test_list("places_lt", "uniform")
    with gzip.open(LISTS / "Places_LT_test.txt.gz", "rt") as f:
        assert list(test_paths) == [line.split()[0] for line in f if line.strip()]
    for name in ("forward50", "backward2", "uniform"):
        mine, y1 = shifted_test_list("places_lt", name)
        shipped, y2 = shifted_test_list("places_lt", name, paths="shipped")
        np.testing.assert_array_equal(y1, y2)
        assert all(p.startswith("val/") and p.count("/") == 2 for p in mine)
        assert all(p.startswith("val_256/Places365_val_") for p in shipped)
        assert [os.path.basename(p) for p in mine] == [os.path.basename(p) for p in shipped]
    # the shipped style is the file verbatim
    with gzip.open(LISTS / "test_agnostic" / "Places_LT_forward50.txt.gz", "rt") as f:
        assert [line.split()[0] for line in f] == list(
            shifted_test_list("places_lt", "forward50", paths="shipped")[0])
    # other datasets: both styles equal
    assert shifted_test_list("imagenet_lt", "forward5", paths="shipped")[0] == \
        shifted_test_list("imagenet_lt", "forward5")[0]


def test_returned_labels_are_private_copies():
    _, y = shifted_test_list("places_lt", "forward50")
    y[:] = -1
    assert shifted_test_list("places_lt", "forward50")[1].min() == 0


@pytest.mark.parametrize("args,match", [
    (("cifar100_lt", "forward50"), "generated, use .*shifted_test_indices"),
    (("imagenet", "forward50"), r"valid choices are \('imagenet_lt', 'places_lt', 'inat2018'\)"),
    (("inat2018", "forward50"), r"forward50.*not a test distribution of inat2018.*forward3"),
    (("imagenet_lt", "forward3"), r"valid choices are \('forward50'"),
    (("imagenet_lt", "sideways"), r"valid choices"),
])
def test_list_errors(args, match):
    with pytest.raises(ValueError, match=match):
        shifted_test_list(*args)
    with pytest.raises(ValueError, match=r"paths='verbatim'.*\('test_list', 'shipped'\)"):
        shifted_test_list("imagenet_lt", "forward50", paths="verbatim")


def test_lists_are_package_data():
    """Every shipped list is read through importlib.resources and declared as package data
    in pyproject.toml (else a wheel / non-editable install would lack it)."""
    assert set(DATASETS) == {"imagenet_lt", "places_lt", "inat2018"}
    folder = importlib.resources.files("ride_jax.data.lists").joinpath("test_agnostic")
    shipped = sorted(f.name for f in folder.iterdir() if f.name.endswith(".txt.gz"))
    assert len(shipped) == 26  # 10 + 10 + 4 shifted lists + 2 uniform (test) lists
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ride_jax.data.lists"]
    declared = {p.relative_to(LISTS).as_posix() for pat in patterns for p in LISTS.glob(pat)}
    missing = [n for n in shipped if f"test_agnostic/{n}" not in declared]
    assert not missing, (f"pyproject.toml's package-data for ride_jax.data.lists does not "
                         f"include test_agnostic/*.txt.gz ({len(missing)} files)")
