"""Writes official_ride_resnet32_c10_e2_f32.pth, the fixture of tests/test_convert.py.

A checkpoint shaped like the one the official RIDE trainer saves
(``base/base_trainer.py::_save_checkpoint``), written by ``torch.save`` in its default
zip format, so that ``ride_jax.torch_pickle.load_pth`` is tested on what torch writes:

* ``state_dict``: the official ResNet32Model (2 experts, CIFAR-10) state dict of
  ``official_ride_resnet32_c10_e2.npz`` (keys ``sd/<name>``, ``backbone.`` prefix kept),
  as **float32** tensors (the npz holds float64; float32 keeps the file ~2 MB), the
  ``num_batches_tracked`` buffers as int64 0-d tensors; one storage per tensor.
* ``config``: an instance of a stand-in for the official ``ConfigParser`` (pickled by
  reference as ``__main__.ConfigParser``), holding a canary whose unpickling would call
  ``builtins.print`` -- a safe reader must not print it.
* ``extras``: tensors that exercise the reader (views sharing one storage with offsets
  and non-contiguous strides, 0-d tensors, stride 0, float16/bfloat16/float64/int8/
  bool/uint16, a conjugate view, an ``nn.Parameter``, an empty tensor). The test
  rebuilds their expected values in numpy, without torch.

Made with torch 2.13.0+cpu (CPU wheel), numpy 2.4, Python 3.11, in a venv used only for
this (torch is not a dependency of ride_jax)::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python tests/data/make_pth_fixture.py

The file is not byte-reproducible (torch.save writes a random serialization id) but its
content is deterministic.
"""

import math
import pathlib
from collections import OrderedDict

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "official_ride_resnet32_c10_e2.npz"
TARGET = HERE / "official_ride_resnet32_c10_e2_f32.pth"
CANARY = "RIDE_JAX_CANARY: unpickling this checkpoint ran pickled code"


class _Canary:
    def __reduce__(self):
        return (print, (CANARY,))


class ConfigParser:
    """Stands in for the official parse_config.ConfigParser (pickled with the run)."""

    def __init__(self):
        self._config = {
            "name": "CIFAR10_LT_RIDE",
            "arch": {"type": "ResNet32Model",
                     "args": {"num_classes": 10, "num_experts": 2, "reduce_dimension": True,
                              "use_norm": True}},
        }
        self.resume = None
        self._save_dir = pathlib.PurePosixPath("saved/models/CIFAR10_LT_RIDE/0101_000000")
        self.canary = _Canary()


def state_dict() -> OrderedDict:
    sd = OrderedDict()
    with np.load(SOURCE) as f:
        for key in f.files:
            if not key.startswith("sd/"):
                continue
            value = f[key]
            if value.dtype == np.float64:
                value = value.astype(np.float32)
            sd[key[len("sd/"):]] = torch.from_numpy(value.copy())  # C order; keeps 0-d
    return sd


def extras() -> dict:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "base": base,                                  # the storage the views share
        "transposed": base.t(),                        # stride (1, 4)
        "window": base[1:, 1:3],                       # offset 5, stride (4, 1)
        "every_third": base.view(-1)[1::3],            # offset 1, stride (3,)
        "scalar_view": base[2, 3],                     # 0-d, offset 11
        "scalar": torch.tensor(-2.5),                  # 0-d, own storage
        "expanded": torch.arange(3, dtype=torch.float32).reshape(3, 1).expand(3, 4),
        "half": torch.tensor([0.5, -1.25, 65504.0, 2.0**-24], dtype=torch.float16),
        "bfloat16": torch.tensor([1.0, -2.5, 0.15625, 2.0**100], dtype=torch.bfloat16),
        "float64": torch.tensor([math.pi, -1e300], dtype=torch.float64),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3
        "conj": torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64).conj(),  # conj bit
        "parameter": torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3)),
        "empty": torch.zeros(0, 3),
    }


def main():
    sd = state_dict()
    checkpoint = {
        "arch": "ResNet32Model",
        "epoch": 200,
        "state_dict": sd,
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.full((16, 3, 3, 3), 0.25)}},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
                              "nesterov": False, "params": [0]}],
        },
        "monitor_best": 0.5,
        "config": ConfigParser(),
        "extras": extras(),
    }
    torch.save(checkpoint, TARGET)
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes, {len(sd)} state_dict entries) "
          f"with torch {torch.__version__}")


if __name__ == "__main__":
    main()
