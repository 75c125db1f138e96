"""``python -m ride_jax.analysis shift`` on the streamed datasets (ImageNet-LT, Places-LT,
iNaturalist 2018): the shipped lists as rows of the test list, SADE's PIL test-time
views (``ride_jax.data.pil_views``) and the whole command on a tiny run whose test
images are files.

Expected values are restated here: torchvision's PIL code paths written out with PIL
calls, ``colorsys``, PIL's documented grey formula, NumPy recomputations from the
logits, and the network applied by hand to images prepared with PIL. The end-to-end run
is a randomly initialised ResNet-32 checkpoint (no training: seconds) whose linear heads
are centred on the test images, so its predictions vary from image to image.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from ride_jax.data import pil_views as PV
from ride_jax.data import test_agnostic
from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD, StreamedImages

from helpers import run_without_tf, synthetic_config

# --------------------------------------------------------------- the shipped lists

DATASETS = ("imagenet_lt", "places_lt", "inat2018")


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_shipped_list_is_rows_of_the_test_list_with_its_labels(dataset):
    uniform_paths, uniform_labels = test_agnostic.shifted_test_list(dataset, "uniform")
    rows = test_agnostic.shifted_test_positions(dataset)
    want_names = (["forward3", "forward2", "uniform", "backward2", "backward3"]
                  if dataset == "inat2018" else
                  ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                   "backward2", "backward5", "backward10", "backward25", "backward50"])
    assert list(rows) == want_names
    for name, pos in rows.items():
        paths, labels = test_agnostic.shifted_test_list(dataset, name)
        assert pos.shape == (len(paths),) and pos.dtype == np.int64, name
        assert len(set(pos.tolist())) == len(pos), name            # no image twice
        assert [uniform_paths[k] for k in pos] == list(paths), name
        np.testing.assert_array_equal(uniform_labels[pos], labels, err_msg=name)
    np.testing.assert_array_equal(rows["uniform"], np.arange(len(uniform_paths)))
    if dataset == "places_lt":         # SADE's val_256/ names became the test list's
        assert all(p.startswith("val/") for p in
                   test_agnostic.shifted_test_list(dataset, "forward50")[0])


def test_a_path_outside_the_test_list_or_with_another_label_is_one_line():
    up, ul = ("a/1.jpg", "b/2.jpg", "c/3.jpg"), np.array([0, 1, 2])
    np.testing.assert_array_equal(
        test_agnostic.list_positions(("c/3.jpg", "a/1.jpg"), [2, 0], up, ul), [2, 0])
    with pytest.raises(ValueError, match=r"^L: d/4.jpg is not in the uniform \(test\) list$"):
        test_agnostic.list_positions(("d/4.jpg",), [0], up, ul, source="L")
    with pytest.raises(ValueError, match="^L: b/2.jpg has label 2, the uniform .* gives it 1$"):
        test_agnostic.list_positions(("b/2.jpg",), [2], up, ul, source="L")
    with pytest.raises(ValueError, match="names a/1.jpg twice"):
        test_agnostic.list_positions(("a/1.jpg",), [0], up + ("a/1.jpg",), [0, 1, 2, 0])


# --------------------------------------------------------------- the PIL view chain

def _smooth(height, width, seed=0):
    rs = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200.0 / width, y * 180.0 / height,
                     (x + y) * 100.0 / (height + width)], -1) + 30.0
    return Image.fromarray(np.clip(base + rs.normal(0, 12, base.shape), 0, 255)
                           .astype(np.uint8), "RGB")


def _torchvision_hue(img, factor):
    """torchvision ``F_pil.adjust_hue``, as written there: PIL HSV, ``np_h +=
    np.array(hue_factor * 255).astype(np.uint8)`` (uint8 wrap-around), back to RGB."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.array(factor * 255).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


@pytest.mark.parametrize("factor", [-0.1, -0.03, 0.05, 0.1])
def test_hue_is_torchvisions_pil_hue_and_rotates_the_hue_as_colorsys_does(factor):
    img = _smooth(24, 20, seed=1)
    got = np.asarray(PV.adjust_hue(img, factor), np.int64)
    np.testing.assert_array_equal(got, np.asarray(_torchvision_hue(img, factor)))
    # colorsys in floats: the rotation by the uint8 step int(factor * 255) / 255 of a turn,
    # up to PIL's uint8 HSV rounding (H and S truncated to 1/255: a few levels at most)
    turn = int(factor * 255) / 255
    want = np.array([[colorsys.hsv_to_rgb((hh + turn) % 1.0, ss, vv)
                      for hh, ss, vv in (colorsys.rgb_to_hsv(*(px / 255.0)) for px in row)]
                     for row in np.asarray(img, np.float64)]) * 255
    d = np.abs(got - want)
    assert d.mean() < 1.0 and d.max() <= 10, (d.mean(), d.max())
    assert np.abs(got - np.asarray(img, np.int64)).mean() > 3       # it did move


def test_grayscale_is_pils_luma_on_three_channels():
    img = _smooth(16, 18, seed=2)
    got = np.asarray(PV.grayscale(img), np.float64)
    rgb = np.asarray(img, np.float64)
    luma = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2]) / 1000
    assert got.shape == (16, 18, 3)
    assert np.all(got[..., 0] == got[..., 1]) and np.all(got[..., 1] == got[..., 2])
    assert np.abs(got[..., 0] - luma).max() <= 1


def test_crop_scale_follows_the_spec_over_many_draws():
    rng = np.random.default_rng(0)
    height, width = 90, 120

    def fractions(spec, n=1500):
        out = []
        for _ in range(n):
            top, left, h, w = PV.sample_view_params(rng, height, width, spec).crop
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (h, w) == (height, width)
            out.append(h * w / (height * width))
        return np.array(out)
    imagenet, inat = fractions(PV.view_spec("imagenet_lt")), fractions(PV.view_spec("inat2018"))
    assert PV.view_spec("places_lt") == PV.view_spec("imagenet_lt")
    assert imagenet.min() >= 0.2 - 0.02 and imagenet.max() <= 1.0
    assert imagenet.min() < 0.23                      # the range is used down to 0.2
    assert inat.min() >= 0.08 - 0.02 and inat.min() < 0.11
    assert np.mean(inat < 0.2) > 0.05                 # iNat crops smaller (scale 0.08)


def test_random_choices_have_the_official_rates_and_ranges_and_are_seeded():
    rng = np.random.default_rng(1)
    draws = [PV.sample_view_params(rng, 40, 50) for _ in range(4000)]
    jitter = np.mean([p.order is not None for p in draws])
    grey = np.mean([p.grayscale for p in draws])
    blur = np.mean([p.blur is not None for p in draws])
    flip = np.mean([p.flip for p in draws])
    assert abs(jitter - 0.8) < 0.03 and abs(grey - 0.2) < 0.03
    assert abs(blur - 0.5) < 0.03 and abs(flip - 0.5) < 0.03
    for p in draws:
        if p.order is not None:
            assert sorted(p.order) == [0, 1, 2, 3]
            b, c, s, h = p.factors
            assert 0.6 <= b <= 1.4 and 0.6 <= c <= 1.4 and 0.6 <= s <= 1.4
            assert -0.1 <= h <= 0.1
        else:
            assert p.factors is None
        assert p.blur is None or 0.1 <= p.blur <= 2.0
    # every order of the four colour ops occurs (a fresh permutation per view)
    assert len({p.order for p in draws if p.order is not None}) == 24
    # the same seed draws the same views, pixel for pixel; another seed others
    img = _smooth(40, 50, seed=3)
    a = [PV.random_view(img, np.random.default_rng(7), size=16) for _ in range(2)]
    b = PV.random_view(img, np.random.default_rng(8), size=16)
    np.testing.assert_array_equal(a[0], a[1])
    assert a[0].shape == (16, 16, 3) and a[0].dtype == np.uint8
    assert not np.array_equal(a[0], b)


def test_view_transform_is_the_official_chain_written_with_pil():
    img = _smooth(30, 40, seed=4)
    params = PV.ViewParams(crop=(3, 5, 20, 24), order=(3, 0, 2, 1),
                           factors=(1.2, 0.7, 1.3, -0.06), grayscale=False, blur=0.8,
                           flip=True)
    want = img.crop((5, 3, 29, 23)).resize((16, 16), Image.BILINEAR)
    want = _torchvision_hue(want, -0.06)
    want = ImageEnhance.Brightness(want).enhance(1.2)
    want = ImageEnhance.Color(want).enhance(1.3)
    want = ImageEnhance.Contrast(want).enhance(0.7)
    want = want.filter(ImageFilter.GaussianBlur(radius=0.8)).transpose(Image.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(PV.view_transform(img, params, 16), np.asarray(want))
    grey = PV.ViewParams(crop=(0, 0, 30, 40), order=None, factors=None, grayscale=True,
                         blur=None, flip=False)
    np.testing.assert_array_equal(
        PV.view_transform(img, grey, 16),
        np.asarray(img.resize((16, 16), Image.BILINEAR).convert("L").convert("RGB")))


# --------------------------------------------------------------- a tiny streamed run

CLASSES = 4
PER_CLASS = 5
SIZE = 16                   # the run's input; the eval resize is round(16 * 256 / 224) = 18
NAMES = ("forward5", "uniform", "backward5")


def _images(root):
    """ImageNet-style test files of varied sizes; the uniform list in a shuffled order."""
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            rel = f"val/n{c:08d}/ILSVRC2012_val_{c * PER_CLASS + i:08d}.JPEG"
            h, w = (int(v) for v in rng.integers(20, 34, 2))
            px = np.clip(rng.normal(55 * c + 40, 45, (h, w, 3)), 0, 255).astype(np.uint8)
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            Image.fromarray(px).save(os.path.join(root, rel), format="JPEG", quality=92)
            paths.append(rel)
            labels.append(c)
    order = rng.permutation(len(paths))
    uniform = (tuple(paths[k] for k in order), np.asarray(labels)[order])
    by_class = {c: [p for p, y in zip(paths, labels) if y == c] for c in range(CLASSES)}
    # per-class sizes 5, 3, 2, 1 (forward) and the mirror (backward), not prefixes
    pick = {"forward5": (5, 3, 2, 1), "backward5": (1, 2, 3, 5)}
    lists = {"uniform": uniform}
    for name, counts in pick.items():
        p = [q for c, n in enumerate(counts) for q in by_class[c][PER_CLASS - n:]]
        lists[name] = (tuple(p), np.repeat(np.arange(CLASSES), counts))
    return lists


def _prepared(path):
    """torchvision Resize(18) + CenterCrop(16) on the file, written with PIL, normalised."""
    with Image.open(path) as f:
        img = f.convert("RGB")
    w, h = img.size
    new = (18, int(18 * h / w)) if w <= h else (int(18 * w / h), 18)
    img = img.resize(new, Image.BILINEAR)
    top, left = int(round((new[1] - SIZE) / 2.0)), int(round((new[0] - SIZE) / 2.0))
    x = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), np.float32) / 255
    return (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


class _Described(StreamedImages):
    """What the trainer describes into ``dataset.json`` for a streamed dataset."""
    name, num_classes, image_size, info = "imagenet_lt", CLASSES, SIZE, {}
    train_counts = np.array([150, 60, 12, 5])
    num_train, num_test = 227, CLASSES * PER_CLASS


def _make_run(workdir, images, uniform):
    """A finished-run folder (config.json, dataset.json, one checkpoint) of a 2-expert
    ResNet-32 on 'imagenet_lt' at 16 px: random weights, linear heads centred on the test
    images. Returns the expert logits of the uniform list, computed here by hand."""
    from ride_jax.checkpointing import Checkpointer
    from ride_jax.networks import model_from_config

    # The ResNet-32 (the smoke recipe's ResNet-8 with these random weights puts every
    # list at accuracy 0, and the lists' accuracies must differ for the check to bite).
    cfg = synthetic_config("experts=2", **{"model.use_norm": False, "model.cifar_blocks": 5})
    cfg.unlock()
    cfg.dataset.name, cfg.dataset.args = "imagenet_lt", {}
    cfg.lock()
    config = json.loads(cfg.to_json())
    model = model_from_config(config["model"], CLASSES)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path).split("'")[-2]
        if name == "kernel":
            fan = np.prod(leaf.shape[-4:-1]) if len(leaf.shape) >= 4 else leaf.shape[-2]
            return rng.normal(0, np.sqrt(2.0 / fan), leaf.shape).astype(np.float32)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    x = np.stack([_prepared(os.path.join(images, p)) for p in uniform])
    raw = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)["expert_logits"])(
        variables, x), np.float64)                                  # bias 0: [E, N, C]
    bias = -raw.mean(1)
    variables["params"]["experts"]["linear"]["bias"] = bias.astype(np.float32)
    os.makedirs(workdir)
    ck = Checkpointer(str(workdir), asynchronous=False)
    ck.save(1, variables, config)
    ck.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(workdir, "dataset.json"), "w") as f:
        json.dump(_Described().describe(), f)
    return raw + bias[:, None, :]


def _patch_lists(mp, lists):
    mp.setattr(test_agnostic, "shifted_test_list",
               lambda dataset, name, paths="test_list": lists[name])
    mp.setattr(test_agnostic, "shift_names", lambda dataset: NAMES)


def _cli(*args):
    """``python -m ride_jax.analysis shift *args`` in this process: (rc, stdout, stderr)."""
    from ride_jax.analysis.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["shift", *args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("streamed")
    images = str(d / "images")
    lists = _images(images)
    expert = _make_run(d / "run", images, lists["uniform"][0])
    with pytest.MonkeyPatch.context() as mp:
        _patch_lists(mp, lists)
        rc, out, err = _cli("--run", str(d / "run"), "--image-root", images, "--tta")
    assert rc == 0, err[-3000:]
    return {"dir": d, "images": images, "lists": lists, "expert": expert, "out": out,
            "err": err, "shift": json.loads((d / "run" / "analysis" / "shift.json")
                                            .read_text())}


def _by_hand(scores, labels, counts):
    """Top-1 and the means of per-class accuracies per training-count group."""
    pred = scores.argmax(-1)
    groups = {"many": counts > 100, "medium": (counts >= 20) & (counts <= 100),
              "few": counts < 20}
    out = {"accuracy": float(np.mean(pred == labels))}
    for g, m in groups.items():
        v = [np.mean(pred[labels == c] == c) for c in np.flatnonzero(m) if np.any(labels == c)]
        out[g] = float(np.mean(v)) if v else None
    return out


def test_the_predictor_is_the_network_on_the_official_eval_transform(run):
    from ride_jax.analysis import shift
    with pytest.MonkeyPatch.context() as mp:
        _patch_lists(mp, run["lists"])
        p = shift.shift_logits(run["dir"] / "run", image_root=run["images"])
    assert p["predictor"].dataset is None and p["predictor"].image_shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(p["labels"], run["lists"]["uniform"][1])
    np.testing.assert_allclose(p["expert_logits"], run["expert"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p["logits"], run["expert"].mean(0), rtol=1e-4, atol=1e-4)
    assert len(set(p["logits"].argmax(-1).tolist())) >= 3        # predictions vary


def test_shift_json_has_the_lists_and_numpy_accuracies(run):
    s = run["shift"]
    assert list(s["distributions"]) == list(NAMES)
    assert s["dataset"] == "imagenet_lt" and s["image_root"] == run["images"]
    assert s["train_counts"] == _Described.train_counts.tolist()
    logits = run["expert"].mean(0)                       # RIDE: the mean of the experts
    uniform_paths, uniform_labels = run["lists"]["uniform"]
    counts = _Described.train_counts
    for name in NAMES:
        paths, labels = run["lists"][name]
        rows = np.array([uniform_paths.index(q) for q in paths])
        e = s["distributions"][name]
        assert e["num_examples"] == len(paths)
        assert e["test_counts"] == np.bincount(labels, minlength=CLASSES).tolist()
        want = _by_hand(logits[rows], labels, counts)
        for k, v in want.items():
            assert e[k] == (None if v is None else pytest.approx(v, abs=1e-12)), (name, k)
        test = np.bincount(labels, minlength=CLASSES) / len(labels)
        with np.errstate(divide="ignore"):
            corrected = logits[rows] + np.log(test) - np.log(counts / counts.sum())
        assert e["prior_corrected"]["accuracy"] == pytest.approx(
            _by_hand(corrected, labels, counts)["accuracy"], abs=1e-12)
    accs = {n: s["distributions"][n]["accuracy"] for n in NAMES}
    assert len(set(accs.values())) > 1, accs
    assert "evaluated the 20 test images" in run["err"]


def test_tta_is_the_learned_weights_on_the_clean_expert_logits(run):
    s = run["shift"]
    assert s["tta"]["views"]["kind"] == "pil" and s["tta"]["views"]["scale"] == [0.2, 1.0]
    assert s["tta"]["views"]["blur_p"] == 0.5 and s["tta"]["batch_size"] == 128
    uniform_paths = run["lists"]["uniform"][0]
    for name in NAMES:
        paths, labels = run["lists"][name]
        rows = np.array([uniform_paths.index(q) for q in paths])
        t = s["distributions"][name]["tta"]
        w = np.asarray(t["weights"])
        assert w.shape == (2,) and w.sum() == pytest.approx(1.0)
        assert 1 <= t["epochs"] <= 5 and len(t["losses"]) == t["epochs"]
        z = np.einsum("e,enc->nc", w, run["expert"][:, rows])
        assert t["accuracy"] == pytest.approx(
            _by_hand(z, labels, _Described.train_counts)["accuracy"], abs=1e-12), name
    assert run["err"].count("test-time aggregation on ") == len(NAMES)
    assert "expert weights" in run["out"] and "wrote" in run["out"]
    png = run["dir"] / "run" / "analysis" / "shift.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_file_views_are_seeded_by_the_key_and_normalised_on_the_device(run):
    """With every random step off (crop scale and ratio 1, p = 0) a view of a square image
    is its bilinear resize; views depend on the key alone."""
    from ride_jax import test_time
    from ride_jax.data.grain_pipeline import FileSource

    files = sorted(str(p) for p in (run["dir"] / "images").rglob("*.JPEG"))[:3]
    squares = []
    for k, f in enumerate(files):
        with Image.open(f) as im:
            sq = im.convert("RGB").resize((24, 24), Image.BILINEAR)
        squares.append(str(run["dir"] / f"square{k}.png"))
        sq.save(squares[-1])
    source = FileSource(squares, [0, 1, 2])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    def pixels(variables, x):                      # "experts": the normalised pixels
        return x.reshape(1, x.shape[0], -1)
    plain = PV.PilViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, grayscale_p=0,
                           blur_p=0, flip=False)
    v1, v2 = test_time.make_file_view_logits(pixels, None, source, mean, std, spec=plain,
                                             size=8)(np.array([2, 0]))(
        jax.random.PRNGKey(0), np.array([1, 0, 1]))
    want = []
    for k in (0, 2, 0):
        with Image.open(squares[k]) as im:
            x = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32)
        want.append(((x / 255 - np.float32(mean)) / np.float32(std)).reshape(-1))
    np.testing.assert_allclose(v1[0], np.stack(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v2[0], np.stack(want), rtol=1e-5, atol=1e-5)
    views = test_time.make_file_view_logits(pixels, None, source, mean, std,
                                            spec=PV.SADE_IMAGENET, size=8)(np.arange(3))
    a1, a2 = views(jax.random.PRNGKey(3), np.array([0, 1, 2]))
    b1, _ = views(jax.random.PRNGKey(3), np.array([0, 1, 2]))
    c1, _ = views(jax.random.PRNGKey(4), np.array([0, 1, 2]))
    np.testing.assert_array_equal(a1, b1)
    assert not np.allclose(a1, a2) and not np.allclose(a1, c1)


_NO_TF_SCRIPT = """\
import json, sys
import numpy as np
from ride_jax.data import test_agnostic
with open(sys.argv[1]) as f:
    lists = {k: (tuple(p), np.asarray(y)) for k, (p, y) in json.load(f).items()}
test_agnostic.shifted_test_list = lambda dataset, name, paths="test_list": lists[name]
test_agnostic.shift_names = lambda dataset: tuple(lists)
from ride_jax.analysis.__main__ import main
rc = main(sys.argv[2:])
print("tensorflow tried:", sys.ride_jax_tf_tried, [m for m in sys.modules
      if m.split(".")[0] in ("tensorflow", "tensorflow_datasets") and sys.modules[m]])
sys.exit(rc)
"""


def test_the_command_runs_without_tensorflow(run, tmp_path):
    lists = {n: [list(run["lists"][n][0]), run["lists"][n][1].tolist()] for n in NAMES}
    (tmp_path / "lists.json").write_text(json.dumps(lists))
    (tmp_path / "script.py").write_text(_NO_TF_SCRIPT)
    proc = run_without_tf(tmp_path, str(tmp_path / "script.py"), str(tmp_path / "lists.json"),
                          "shift", "--run", str(run["dir"] / "run"), "--image-root",
                          run["images"], "--no-tta", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow tried: [] []" in proc.stdout
    got = json.loads((tmp_path / "out" / "shift.json").read_text())
    assert got["tta"] is None and list(got["distributions"]) == list(NAMES)
    for name in NAMES:
        assert got["distributions"][name]["accuracy"] == \
            run["shift"]["distributions"][name]["accuracy"]


def _one_error(rc, out, err):
    assert rc == 2, (rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_image_root_or_file_is_one_line_and_writes_nothing(run, tmp_path, monkeypatch):
    _patch_lists(monkeypatch, run["lists"])
    work = tmp_path / "run"
    shutil.copytree(run["dir"] / "run", work, ignore=shutil.ignore_patterns("analysis"))
    first, last = run["lists"]["uniform"][0][0], run["lists"]["uniform"][0][-1]
    line = _one_error(*_cli("--run", str(work), "--tta"))
    assert "pass --image-root DIR" in line and f"DIR/{first}" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error(*_cli("--run", str(work), "--image-root", str(empty)))
    assert f"{empty / first}' does not exist" in line
    partial = tmp_path / "partial"
    (partial / os.path.dirname(first)).mkdir(parents=True)
    shutil.copy(os.path.join(run["images"], first), partial / first)
    line = _one_error(*_cli("--run", str(work), "--image-root", str(partial)))
    assert f"{partial / last}' does not exist" in line
    line = _one_error(*_cli("--run", str(work), "--image-root", str(tmp_path / "nowhere")))
    assert "is not a folder" in line
    assert not (work / "analysis").exists()
    # an in-memory run takes no --image-root
    mem = tmp_path / "mem"
    mem.mkdir()
    (mem / "config.json").write_text(json.dumps({"dataset": {"name": "synthetic_lt"}}))
    assert "--image-root is for runs on imagenet_lt" in _one_error(
        *_cli("--run", str(mem), "--image-root", str(empty)))
    assert sorted(x.name for x in mem.iterdir()) == ["config.json"]


def test_image_root_defaults_to_the_config_and_compare_reuses_the_names(run, tmp_path,
                                                                      monkeypatch):
    from ride_jax.analysis import shift
    _patch_lists(monkeypatch, run["lists"])
    config = {"dataset": {"name": "places_lt", "args": {"image_root": run["images"]}}}
    assert shift.resolve_image_root(config) == run["images"]
    assert shift.resolve_image_root(config, str(tmp_path)) == str(tmp_path)
    # a saved streamed shift.json (3 names here) is reused and plotted with its names
    copy = tmp_path / "copy" / "analysis"
    copy.mkdir(parents=True)
    shutil.copy(run["dir"] / "run" / "analysis" / "shift.json", copy / "shift.json")
    out = shift.compare_shift([tmp_path / "copy"], tmp_path / "cmp", tta=True)
    assert out["reused"] == ["copy"] and (tmp_path / "cmp" / "shift.png").exists()
    table = shift.format_table(out["results"])
    assert all(n in table for n in NAMES) and "forward50" not in table
    # an in-memory run's file must hold the eleven; runs of two protocols do not overlay
    saved = json.loads((copy / "shift.json").read_text())
    bad = tmp_path / "bad" / "analysis"
    bad.mkdir(parents=True)
    (bad / "shift.json").write_text(json.dumps(dict(saved, dataset="synthetic_lt")))
    with pytest.raises(ValueError, match="does not hold the 11 distributions"):
        shift.compare_shift([tmp_path / "bad"], tmp_path / "cmp2")
    eleven = tmp_path / "eleven" / "analysis"
    eleven.mkdir(parents=True)
    entry = saved["distributions"]["uniform"]
    (eleven / "shift.json").write_text(json.dumps(dict(
        saved, dataset="synthetic_lt", distributions={n: entry for n in (
            "forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
            "backward2", "backward5", "backward10", "backward25", "backward50")})))
    with pytest.raises(ValueError, match="different test distributions"):
        shift.compare_shift([tmp_path / "copy", tmp_path / "eleven"], tmp_path / "cmp2")
    assert not (tmp_path / "cmp2").exists()
