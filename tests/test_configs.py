"""The recipe files in configs/: every argument loads, the values are the official ones.

Official values: RIDE's ``configs/*.json`` (optimiser, schedule, RIDE loss constants per
dataset), ``train.py`` (``CustomLR``) and ``test.py`` (test batch 128); ResLT's scripts.
"""

from __future__ import annotations

import ast
import inspect
import os
import pathlib

import ml_collections
import pytest

from ride_jax.configlib import load
from ride_jax.data.long_tail import long_tail_counts
from ride_jax.data.registry import dataset_arguments, dataset_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

LOSSES = ["ride", "ldam_drw", "ce", "focal", "reslt", "ride_reslt"]
RIDE_LOSSES = ["ride", "ldam_drw", "ce", "focal"]     # places_lt: ResLT ships no recipe
EXPERTS = [1, 2, 3, 4, 5, 6]
RATIOS = [100, 50, 10]
BACKBONES = {"r10": "resnet10", "r50": "resnet50", "rx50": "resnext50"}
STAGES = ["router", "distill", "crt", "eval"]

# file -> {argument: values to try}; "smoke" is tried on its own and with each loss.
ARGS = {
    "cifar100_lt": {"ratio": RATIOS, "experts": EXPERTS, "loss": LOSSES, "smoke": [True],
                    "stage": STAGES, "epochs": [12]},
    "cifar10_lt": {"ratio": RATIOS, "experts": EXPERTS, "loss": LOSSES, "smoke": [True],
                   "stage": STAGES, "epochs": [12]},
    "fashion_mnist_lt": {"ratio": RATIOS, "experts": EXPERTS, "loss": LOSSES,
                         "smoke": [True], "stage": STAGES, "img_max": [500],
                         "epochs": [12]},
    "cifar10_jpeg_lt": {"ratio": RATIOS, "experts": EXPERTS, "loss": LOSSES, "smoke": [True],
                        "path": ["/tmp/somewhere/cifar10.zip"], "stage": STAGES, "epochs": [12],
                        "img_max": [500]},
    "synthetic_lt": {"experts": EXPERTS, "loss": LOSSES, "smoke": [True], "stage": STAGES},
    "imagenet_lt": {"backbone": list(BACKBONES), "experts": EXPERTS, "loss": LOSSES,
                    "data_dir": ["/tmp/tfds"], "stage": STAGES},
    "inat2018": {"backbone": list(BACKBONES), "experts": EXPERTS, "loss": LOSSES,
                 "data_dir": ["/tmp/tfds"], "stage": STAGES},
    "places_lt": {"backbone": list(BACKBONES), "experts": EXPERTS, "loss": RIDE_LOSSES,
                  "image_root": ["/tmp/places365"], "data_dir": ["/tmp/tfds"],
                  "stage": STAGES},
}
NUM_CLASSES = {"cifar100_lt": 100, "cifar10_lt": 10, "fashion_mnist_lt": 10,
               "cifar10_jpeg_lt": 10, "synthetic_lt": 10, "imagenet_lt": 1000, "inat2018": 8142, "places_lt": 365}
CIFAR_STYLE = ("cifar100_lt", "cifar10_lt", "fashion_mnist_lt", "cifar10_jpeg_lt",
               "synthetic_lt")
STREAMING = ("imagenet_lt", "inat2018", "places_lt")
DATASET = {"cifar100_lt": "cifar100_lt", "cifar10_lt": "cifar10_lt",
           "fashion_mnist_lt": "fashion_mnist_lt", "cifar10_jpeg_lt": "image_folder_lt",
           "synthetic_lt": "synthetic_lt",
           "imagenet_lt": "imagenet_lt", "inat2018": "inat2018", "places_lt": "places_lt"}


def _cases():
    for name, args in ARGS.items():
        yield name, ""
        for key, values in args.items():
            for v in values:
                yield name, key if v is True else f"{key}={v}"
        if "smoke" in args:
            for loss in LOSSES:
                yield name, f"smoke,loss={loss}"
            yield name, "smoke,experts=6" + (",ratio=50" if "ratio" in args else "")
            for stage in STAGES:
                yield name, f"smoke,stage={stage}"


def _param(name, arg):
    return pytest.param(name, arg)


CASES = list(_cases())


def _load(name, arg=""):
    return load(CONFIGS / f"{name}.py", arg)


def _parsed(arg):
    out = {}
    for item in arg.split(","):
        if item:
            k, eq, v = item.partition("=")
            out[k] = v if eq else True
    return out


def test_every_config_file_is_covered():
    files = {p.stem for p in CONFIGS.glob("*.py")} - {"__init__", "common"}
    # folder_lt (a user's folder, no default data) has its tests in test_folder_stream.py.
    assert files == set(ARGS) | {"folder_lt"}


@pytest.mark.parametrize("name,arg", [_param(n, a) for n, a in CASES],
                         ids=[f"{n}:{a}" for n, a in CASES])
def test_loads_with_argument(name, arg):
    c = _load(name, arg)
    a = _parsed(arg)
    assert isinstance(c, ml_collections.ConfigDict)
    assert c.is_locked
    assert c.dataset.name == DATASET[name]

    # Dataset arguments are arguments of the registered builder; required ones given.
    valid = dataset_arguments(c.dataset.name)
    args = c.dataset.args.to_dict()
    assert set(args) <= set(valid), sorted(set(args) - set(valid))
    params = inspect.signature(dataset_builder(c.dataset.name)).parameters
    required = {k for k, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= set(args)

    # The arguments are applied.
    loss = a.get("loss", "ride")
    if loss in ("reslt", "ride_reslt"):
        _check_reslt_applied(c, name, a)
        return
    assert c.loss.name == loss
    if loss == "ride":
        assert c.model.num_experts == int(a.get("experts", 3))
        assert c.model.reduce_dimension is True
    else:
        assert c.model.num_experts == 1
        assert c.model.reduce_dimension is False
        assert c.optim.nesterov is False
        assert c.optim.weight_decay == 2e-4
        assert c.model.use_norm == (loss == "ldam_drw")
    if "backbone" in a:
        assert c.model.arch == BACKBONES[a["backbone"]]
    if "ratio" in a and "smoke" not in a:
        assert c.dataset.args.ratio == float(a["ratio"])
    for key in ("path", "data_dir", "image_root"):
        if key in a:
            assert c.dataset.args[key] == a[key]

    if "img_max" in a and "smoke" not in a:
        assert c.dataset.args.img_max == float(a["img_max"])

    # A coherent schedule: warmup before the first step, the loss switch with an LR
    # decay (epoch step1 or step2), everything inside the run.
    o = c.optim
    stage = a.get("stage", "train")
    assert c.stage == stage and c.init_from == ""
    assert 1 <= c.router.top_k <= NUM_CLASSES[name]
    assert c.data.batch_size > 0 and c.data.eval_batch_size > 0
    if stage in ("train", "distill"):
        assert o.schedule == "custom"
        assert 0 < o.warmup_epochs <= o.step1 <= o.step2 <= c.epochs
        assert c.loss.reweight_epoch in (o.step1, o.step2)
        assert c.loss.reweight_epoch < c.epochs
        if stage == "distill" and "smoke" not in a:
            # official: 20 warm-up epochs for CIFAR distillation, 5 elsewhere
            assert o.warmup_epochs == (20 if name in CIFAR_STYLE else 5)
    elif stage == "eval":
        assert c.epochs == 0
    else:   # router (RIDE-EA stage 2, official *_ride_ea.json) and crt: cosine, balanced
        assert o.schedule == "cosine" and c.data.sampler == "balanced"
        assert o.weight_decay == 5e-4
        if stage == "router":
            assert o.lr == 0.01 and o.nesterov and o.momentum == 0.9
            if "smoke" not in a:
                assert c.epochs == 5 and c.data.batch_size == 512
        return

    if a.get("smoke") and stage != "eval":
        assert c.epochs == 2
        assert c.loss.reweight_epoch == 1
        # The dataset is shrunk to at most ~1000 training images (a run of about a
        # minute on a 2-core CPU).
        assert "img_max" in c.dataset.args, "smoke must shrink the dataset (img_max)"
        counts = long_tail_counts(NUM_CLASSES[name], c.dataset.args.img_max,
                                  c.dataset.args.ratio)
        assert counts.sum() <= 1000, counts.sum()
    if name in CIFAR_STYLE:
        assert c.model.arch == "resnet32"
        assert c.data.augment == ("ride" if loss == "ride" else "ldam")
    else:
        assert c.data.augment == "none"       # the streaming loader augments


def _check_reslt_applied(c, name, a):
    """loss=reslt|ride_reslt: ResLT heads and loss; RIDE's experts only for ride_reslt."""
    ride = a["loss"] == "ride_reslt"
    assert c.loss.name == "reslt" and c.model.head == "reslt"
    assert c.model.use_norm is False
    assert c.model.num_experts == (int(a.get("experts", 3)) if ride else 1)
    assert c.data.remainder == "drop"                   # official drop_last=True
    assert 0 < c.loss.reslt_beta < 1
    assert c.model.reslt_branches == (2 if name == "inat2018" else 3)
    assert (c.loss.reslt_tail < 0) == (c.model.reslt_branches == 2)
    stage = a.get("stage", "train")
    assert c.stage == stage
    if stage != "train":
        return
    if name in CIFAR_STYLE:
        assert c.loss.reslt_groups == "index"
        assert c.model.reduce_dimension is ride
        assert c.data.augment == "ldam"                 # crop + flip, no rotation
        assert c.optim.schedule == "custom" and c.optim.warmup_from == pytest.approx(1 / 3)
        assert c.optim.gamma == 0.1
    else:
        assert c.loss.reslt_groups == "frequency"
        assert c.data.augment == "none"
        assert c.optim.schedule in ("cosine", "warmup_cosine")
        assert c.optim.nesterov is False
        assert c.model.reslt_eval_gamma >= 0


@pytest.mark.parametrize("name", ["cifar100_lt", "cifar10_lt"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_reslt_cifar_official_recipe(name, ratio):
    """ResLT's CIFAR scripts (CIFAR100LT_imf*.sh): ResLTResNet32, beta per ratio, groups, schedule."""
    c = _load(name, f"loss=reslt,ratio={ratio}")
    beta = {"cifar100_lt": {100: 0.995, 50: 0.99, 10: 0.72},
            "cifar10_lt": {100: 0.998, 50: 0.998, 10: 0.96}}[name][ratio]
    assert c.loss.reslt_beta == beta
    groups = {"cifar100_lt": (35, 70), "cifar10_lt": (2, 4)}[name]
    assert (c.loss.reslt_medium_tail, c.loss.reslt_tail) == groups
    assert c.loss.reslt_fused_ce == "plain" and c.loss.label_smoothing == 0
    assert c.model.arch == "resnet32" and c.model.num_experts == 1
    assert not c.model.reduce_dimension and c.model.reslt_eval_gamma < 0  # no --gamma
    assert c.data.batch_size == 128 and c.epochs == 200
    o = c.optim
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (0.1, 0.9, 5e-4, True)
    assert (o.warmup_epochs, o.step1, o.step2, o.gamma) == (5, 160, 180, 0.1)
    assert o.schedule == "custom" and o.warmup_from == pytest.approx(1 / 3)


def test_reslt_imagenet_lt_official_recipes():
    """ResLT ImageNetLT/sh: R10.sh, X50.sh and X50_bt128_reslt_ride.sh."""
    for backbone, arch, gamma, order in (("r10", "resnet10", 0.3, "pool_conv"),
                                         ("rx50", "resnext50", 0.7, "conv_pool")):
        c = _load("imagenet_lt", f"loss=reslt,backbone={backbone}")
        assert c.model.arch == arch and c.model.num_experts == 1
        assert not c.model.reduce_dimension
        assert c.model.reslt_eval_gamma == gamma
        assert (c.model.reslt_train_order, c.model.reslt_eval_order) == (order, "pool_conv")
        assert (c.data.batch_size, c.optim.lr, c.epochs) == (256, 0.1, 180)
    ride = _load("imagenet_lt", "loss=ride_reslt,backbone=rx50")
    assert ride.model.num_experts == 3 and ride.model.reduce_dimension
    assert ride.model.reslt_eval_gamma == 0.7
    assert ride.model.reslt_train_order == "conv_pool"
    assert (ride.data.batch_size, ride.optim.lr, ride.epochs) == (128, 0.05, 180)
    for c in (_load("imagenet_lt", "loss=reslt,backbone=rx50"), ride):
        assert c.loss.reslt_beta == 0.99 and c.loss.reslt_groups == "frequency"
        assert (c.loss.reslt_medium_tail, c.loss.reslt_tail) == (825, 220)
        assert c.loss.reslt_fused_ce == "eps" and c.loss.label_smoothing == 0
        o = c.optim
        assert (o.momentum, o.weight_decay, o.nesterov) == (0.9, 5e-4, False)
        assert (o.schedule, o.warmup_epochs) == ("warmup_cosine", 5)


def test_reslt_inat_official_recipes():
    """ResLT's iNat scripts: R50.sh (two branches, cosine without warm-up), R50_ride_reslt.sh."""
    c = _load("inat2018", "loss=reslt")
    ride = _load("inat2018", "loss=ride_reslt")
    for x in (c, ride):
        assert x.model.arch == "resnet50" and x.model.reslt_branches == 2
        assert (x.loss.reslt_medium_tail, x.loss.reslt_tail) == (6600, -1)
        assert x.loss.reslt_beta == 0.85 and x.loss.reslt_fused_ce == "plain"
        assert x.model.reslt_eval_gamma == 0.3 and x.model.reslt_train_order == "conv_pool"
        assert (x.data.batch_size, x.optim.lr, x.epochs) == (256, 0.1, 200)
        assert (x.optim.weight_decay, x.optim.nesterov) == (1e-4, False)
    assert c.model.num_experts == 1 and (c.optim.schedule, c.optim.warmup_epochs) == (
        "cosine", 0)
    assert ride.model.num_experts == 3 and not ride.model.reduce_dimension  # not reduced
    assert (ride.optim.schedule, ride.optim.warmup_epochs) == ("warmup_cosine", 5)


@pytest.mark.parametrize("loss", ["reslt", "ride_reslt"])
def test_places_lt_refuses_reslt(loss):
    with pytest.raises(ValueError, match="ResLT ships recipes for.*places_lt"):
        _load("places_lt", f"loss={loss}")


def test_locked_config_rejects_unknown_keys():
    for name in ARGS:
        c = _load(name)
        with pytest.raises((AttributeError, KeyError)):
            c.optim.lrr = 0.2
        with pytest.raises((AttributeError, KeyError)):
            c.not_a_key = 1
        c.optim.lr = 0.05           # known keys can still be overridden
        assert c.optim.lr == 0.05


BAD_VALUES = [(name, key, bad) for name, args in ARGS.items() for key, bad in
              [("ratio", "7"), ("experts", "0"), ("experts", "7"), ("loss", "bogus"),
               ("backbone", "r18")] if key in args]


@pytest.mark.parametrize("name,key,bad", BAD_VALUES,
                         ids=[f"{n}:{k}={b}" for n, k, b in BAD_VALUES])
def test_bad_value_names_valid_choices(name, key, bad):
    with pytest.raises(ValueError) as e:
        _load(name, f"{key}={bad}")
    msg = str(e.value)
    assert "valid choices" in msg and key in msg
    expected = {"ratio": RATIOS, "experts": EXPERTS, "loss": LOSSES,
                "backbone": list(BACKBONES)}[key]   # places_lt too lists every method
    for v in expected:
        assert repr(v) in msg


@pytest.mark.parametrize("name", list(ARGS))
def test_unknown_argument_names_valid_arguments(name):
    with pytest.raises(ValueError) as e:
        _load(name, "bogus=1")
    msg = str(e.value)
    assert "bogus" in msg
    for key in ARGS[name]:
        assert repr(key) in msg


@pytest.mark.parametrize("name", list(ARGS))
def test_docstring_has_launch_command(name):
    doc = ast.get_docstring(ast.parse((CONFIGS / f"{name}.py").read_text()))
    assert doc
    assert f"python -m ride_jax.main --config=configs/{name}.py" in doc
    for key in ARGS[name]:        # every argument is documented
        assert key in doc


# ------------------------------------------------------------------ official values


def _check_cifar_recipe(c):
    assert c.model.arch == "resnet32"
    assert c.data.batch_size == 128 and c.data.eval_batch_size == 128
    assert c.epochs == 200
    o = c.optim
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (0.1, 0.9, 5e-4, True)
    assert (o.warmup_epochs, o.step1, o.step2, o.gamma) == (5, 160, 180, 0.01)
    assert c.loss.reweight_epoch == 160
    assert c.loss.diversity_factor == -0.45 and c.loss.reweight_factor == 0.05
    assert c.model.num_experts == 3 and c.model.reduce_dimension and c.model.use_norm
    assert c.model.scale == 30.0
    assert c.data.augment == "ride"


@pytest.mark.parametrize("name", CIFAR_STYLE)
def test_cifar_style_official_recipe(name):
    _check_cifar_recipe(_load(name))
    ldam = _load(name, "loss=ldam_drw")
    assert ldam.model.num_experts == 1
    assert ldam.optim.weight_decay == 2e-4 and ldam.optim.nesterov is False
    assert ldam.model.use_norm and not ldam.model.reduce_dimension
    assert ldam.data.augment == "ldam"
    assert (ldam.optim.step1, ldam.optim.step2, ldam.loss.reweight_epoch) == (160, 180, 160)


EPOCH_BUDGET = ("cifar100_lt", "cifar10_lt", "fashion_mnist_lt", "cifar10_jpeg_lt")


@pytest.mark.parametrize("name", EPOCH_BUDGET)
@pytest.mark.parametrize("loss", ["ride", "ldam_drw", "reslt"])
def test_epochs_argument_compresses_the_schedule(name, loss):
    full = _load(name, f"loss={loss}")
    for epochs, (warmup, step1, step2) in {12: (1, 10, 11), 20: (1, 16, 18),
                                             100: (2, 80, 90), 400: (10, 320, 360)}.items():
        c = _load(name, f"loss={loss},epochs={epochs}")
        assert c.epochs == epochs
        assert (c.optim.warmup_epochs, c.optim.step1, c.optim.step2) == (warmup, step1, step2)
        assert c.loss.reweight_epoch == step1       # DRW starts with the first LR step
        # nothing else changes: the method's recipe is kept
        a, b = c.to_dict(), full.to_dict()
        for key in ("epochs",):
            a.pop(key), b.pop(key)
        for d in (a, b):
            for key in ("warmup_epochs", "step1", "step2"):
                d["optim"].pop(key)
            d["loss"].pop("reweight_epoch")
        assert a == b


def test_epochs_argument_scales_stage_schedules():
    assert _load("cifar10_lt", "stage=router").epochs == 5
    c = _load("cifar10_lt", "stage=router,epochs=2")
    assert c.epochs == 2 and c.optim.warmup_epochs == 0      # no warm-up stays none
    c = _load("cifar10_lt", "stage=distill,epochs=20")
    assert c.epochs == 20 and c.optim.warmup_epochs == 2     # the distill warm-up of 20


@pytest.mark.parametrize("arg,words", [("epochs=-3", ["epochs=-3", ">= 1"]),
                                       ("smoke,epochs=3", ["smoke", "epochs"]),
                                       ("stage=eval,epochs=3", ["epochs", "stage=eval"])])
def test_epochs_argument_errors(arg, words):
    with pytest.raises(ValueError) as e:
        _load("cifar10_lt", arg)
    for w in words:
        assert w in str(e.value)


def test_cifar_datasets():
    assert _load("cifar100_lt").dataset.args.to_dict() == {"ratio": 100.0}
    assert _load("cifar10_lt").dataset.args.to_dict() == {"ratio": 100.0}
    assert _load("fashion_mnist_lt").dataset.args.to_dict() == {"ratio": 100.0,
                                                                "img_max": 6000.0}
    jpeg = _load("cifar10_jpeg_lt").dataset.args.to_dict()
    default = os.path.normpath(ROOT / ".." / "shared" / "data" / "cifar10-jpeg"
                               / "cifar10-jpeg.zip")
    assert jpeg == {"path": default, "ratio": 100.0}
    assert "img_max" not in jpeg           # 5000 = len(train) / C, the official value


def _check_imagenet_recipe(c, batch, lr, reweight_factor):
    assert c.data.batch_size == batch and c.data.eval_batch_size == 128
    assert c.epochs == 100
    o = c.optim
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (lr, 0.9, 2e-4, True)
    assert (o.warmup_epochs, o.step1, o.step2, o.gamma) == (5, 60, 80, 0.1)
    assert c.loss.reweight_epoch == 80
    assert c.loss.diversity_factor == -0.2
    assert c.loss.reweight_factor == reweight_factor
    assert c.model.num_experts == 3 and c.model.reduce_dimension and c.model.use_norm
    assert c.model.scale == 30.0


def test_imagenet_lt_official_recipe():
    c = _load("imagenet_lt")
    _check_imagenet_recipe(c, 256, 0.1, 0.02)
    assert c.model.arch == "resnet50"
    assert c.dataset.args.to_dict() == {}
    for b, arch in BACKBONES.items():
        c = _load("imagenet_lt", f"backbone={b}")
        _check_imagenet_recipe(c, 256, 0.1, 0.02)
        assert c.model.arch == arch


def test_inat2018_official_recipe():
    c = _load("inat2018")
    _check_imagenet_recipe(c, 512, 0.2, 0.015)
    assert c.model.arch == "resnet50"
    assert c.dataset.args.to_dict() == {}


def test_places_lt_recipe():
    c = _load("places_lt")
    _check_imagenet_recipe(c, 256, 0.1, 0.02)
    assert c.model.arch == "resnet50"
    assert c.dataset.args.to_dict() == {}


def test_streaming_ldam_keeps_streaming_augmentation():
    for name in STREAMING:
        c = _load(name, "loss=ldam_drw")
        assert c.data.augment == "none"
        assert c.optim.nesterov is False and c.model.num_experts == 1


# ------------------------------------------------------------ offline smoke datasets


def test_fashion_mnist_smoke_dataset_is_small():
    from ride_jax.data import fashion_mnist
    from ride_jax.data.registry import load_dataset
    if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    c = _load("fashion_mnist_lt", "smoke")
    d = load_dataset(c.dataset.name, **c.dataset.args.to_dict())
    assert d.train.images.shape[1:] == (28, 28, 1)
    assert len(d.train.labels) < 1000
    assert d.num_classes == 10


def test_cifar10_jpeg_img_max():
    assert "img_max" not in _load("cifar10_jpeg_lt").dataset.args      # the full 5000
    c = _load("cifar10_jpeg_lt", "img_max=500,ratio=50")
    assert c.dataset.args.img_max == 500.0 and c.dataset.args.ratio == 50.0
    with pytest.raises(ValueError, match="img_max=-5.0"):
        _load("cifar10_jpeg_lt", "img_max=-5")


def test_cifar10_jpeg_smoke_dataset_is_small():
    from ride_jax.data.registry import load_dataset
    c = _load("cifar10_jpeg_lt", "smoke")
    if not os.path.exists(c.dataset.args.path):
        pytest.skip("the CIFAR-10 JPEG pack is not there")
    d = load_dataset(c.dataset.name, **c.dataset.args.to_dict())
    assert d.train.images.shape[1:] == (32, 32, 3)
    assert len(d.train.labels) < 500
    assert d.num_classes == 10


def test_router_top_k_is_the_official_top_choices_num():
    """``top_choices_num`` of the official *_ride_ea.json: 30 for CIFAR-100 and ImageNet-LT
    ResNet-10, 50 for R50/RX50 and iNat; never more than the number of classes (10-class
    data: all 10)."""
    assert _load("cifar100_lt", "stage=router").router.top_k == 30
    assert _load("imagenet_lt", "backbone=r10,stage=router").router.top_k == 30
    assert _load("imagenet_lt", "backbone=r50,stage=router").router.top_k == 50
    assert _load("imagenet_lt", "backbone=rx50,stage=router").router.top_k == 50
    assert _load("inat2018", "stage=router").router.top_k == 50
    for name in ("cifar10_lt", "fashion_mnist_lt", "cifar10_jpeg_lt", "synthetic_lt"):
        assert _load(name, "stage=router").router.top_k == 10
    c = _load("cifar100_lt", "stage=router")
    assert (c.router.pos_weight, c.router.hidden) == (100.0, 16)


def test_bad_stage_names_the_valid_ones():
    with pytest.raises(ValueError, match="router"):
        _load("cifar100_lt", "stage=stage2")


def test_load_splits_path_and_argument_when_the_argument_holds_a_path():
    """``path.py:args`` splits after ``.py``, so ``path=/a/b.zip`` in the args stays whole."""
    c = load(f"{CONFIGS / 'cifar10_jpeg_lt.py'}:img_max=500,path=/data/x:y/c10.zip")
    assert c.dataset.args.path == "/data/x:y/c10.zip"
    assert c.dataset.args.img_max == 500
    assert load(f"{CONFIGS / 'fashion_mnist_lt.py'}:loss=ce").loss.name == "ce"
