"""CIFAR-10-LT from the offline CIFAR-10 JPEG pack, with the CIFAR-LT RIDE recipe.

    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py --workdir=runs/c10jpeg_ride3
    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py:ratio=10,experts=4 --workdir=...
    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py:loss=ldam_drw --workdir=...
    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py:img_max=500,epochs=20 --workdir=...
    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py:smoke --workdir=/tmp/jpeg_smoke
    python -m ride_jax.main --config=configs/cifar10_jpeg_lt.py:path=/data/my-cifar10.zip --workdir=...

Arguments: path (a ``train/<class>/NNNN.jpg`` + ``test/...`` folder or zip; default
``../shared/data/cifar10-jpeg/cifar10-jpeg.zip`` next to the repository, resolved from
this file's location), ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade
(ResLT: the CIFAR-10 groups and beta, ``ride_jax/methods/reslt.py``: ``apply_cifar``),
stage train|router|distill|crt|eval (as in cifar100_lt.py; router top_k = 10), smoke (two epochs on a head class of 100 images and
ratio 10, whatever ``ratio`` says), img_max (head class size; default the full
5000; 500 gives 1,236 images and few-shot classes, as the Fashion-MNIST runs), epochs N (the recipe's schedule compressed to N epochs, ``common.apply_epoch_budget``;
not an official recipe: a budget-limited comparison).

Dataset ``image_folder_lt`` (``ride_jax.data.image_folder``): classes in sorted folder
order (= the CIFAR-10 label order), files in name order (= the original order within a
class), so the official long-tail selection keeps the same images as the tfds
``cifar10_lt``; head class ``len(train) / C`` = 5000 images; normalised with the CIFAR
constants (the builder's default). The recipe is the CIFAR-100-LT one (RIDE
configs/config_imbalance_cifar100_ride.json). JPEG decoding makes the pixels differ slightly from the tfds PNG ones.
"""

import os

from configs import common

NUM_CLASSES = 10
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "data", "cifar10-jpeg", "cifar10-jpeg.zip"))
SMOKE_IMG_MAX = 100.0
SMOKE_RATIO = 10.0


def get_config(arg=None):
    a = common.parse_small_image_arg(arg, path=DEFAULT_PATH, img_max=0.0)
    if not a.path:
        raise ValueError("config argument path= must name a folder or .zip")
    if a.img_max < 0:
        raise ValueError(f"config argument img_max={a.img_max} must be > 0 (0 or absent: "
                         "the full head class, len(train) / C = 5000 images)")
    path = os.path.expanduser(a.path)
    args = {"path": path, "ratio": float(a.ratio)}
    if a.img_max:
        args["img_max"] = float(a.img_max)
    return common.small_image_config(
        a, "image_folder_lt", args,
        {"path": path, "ratio": SMOKE_RATIO, "img_max": SMOKE_IMG_MAX},
        router_top_k=NUM_CLASSES)
