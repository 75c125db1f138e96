"""Fashion-MNIST-LT with the CIFAR-LT RIDE recipe on the CIFAR ResNet-32.

    python -m ride_jax.main --config=configs/fashion_mnist_lt.py --workdir=runs/fmnist_ride3
    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:ratio=10,experts=2 --workdir=...
    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:loss=ldam_drw --workdir=...
    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:img_max=500 --workdir=runs/fm500
    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:img_max=500,stage=router \\
        --config.init_from=runs/fm500 --workdir=runs/fm500_ea
    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:smoke --workdir=/tmp/fm_smoke

Arguments: ratio 100|50|10, experts 1..6, loss ride|ldam_drw|ce|focal|reslt|ride_reslt|logit_adjusted|balanced_softmax|sade
(ResLT: the CIFAR-10 groups and beta, ``ride_jax/methods/reslt.py``: ``apply_cifar``), img_max (head
class size, default 6000 = all of Fashion-MNIST; 500 gives few-shot classes), stage
train|router|distill|crt|eval, smoke (two
epochs on a head class of 200 images and ratio 10, whatever ``ratio`` says, read with
the NumPy backend: about a minute on a 2-core CPU), epochs N (the recipe's schedule compressed to N epochs, ``common.apply_epoch_budget``;
not an official recipe: a budget-limited comparison).

Not in RIDE. The data come offline from Debian's ``dataset-fashion-mnist`` files
(``ride_jax.data.fashion_mnist``): the official CIFAR-LT selection on the 60,000
training images (head class 6000 images, ``n_c = int(6000 * ratio**(-c/9))``), test =
the 10,000 t10k images. The recipe is the CIFAR-100-LT one unchanged (RIDE
configs/config_imbalance_cifar100_ride.json); the 28x28x1 images go through the CIFAR ResNet-32 as they are (its global
average pool takes any size: 7x7 maps after layer3) and the CIFAR augmentation (pad 4
+ crop 28, flip, rotation 15) works on any size.
"""

from configs import common

NUM_CLASSES = 10
SMOKE_IMG_MAX = 200.0
SMOKE_RATIO = 10.0


def get_config(arg=None):
    a = common.parse_small_image_arg(arg, img_max=6000)
    # smoke: the NumPy reader gives the same arrays without TensorFlow or tfds' one-time
    # preparation (~30 s).
    return common.small_image_config(
        a, "fashion_mnist_lt", {"ratio": float(a.ratio), "img_max": float(a.img_max)},
        {"ratio": SMOKE_RATIO, "img_max": SMOKE_IMG_MAX, "backend": "idx"},
        router_top_k=NUM_CLASSES)
