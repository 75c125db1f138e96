"""Build a dataset once and write a copy that loads without TensorFlow.

Usage::

    python -m ride_jax.data.prepare --dataset=cifar100_lt --ratio=100 --out=data/c100_lt_r100.npz
    python -m ride_jax.data.prepare --dataset=fashion_mnist_lt --ratio=100 --img_max=6000 --out=fm.npz
    python -m ride_jax.data.prepare --dataset=image_folder_lt --path=cifar10-jpeg.zip --ratio=100 --out=c10.npz
    python -m ride_jax.data.prepare --dataset=imagenet_lt --out=/data/imagenet_lt_records

An in-memory dataset becomes a NumPy ``.npz`` cache. A streamed one (ImageNet-LT,
iNaturalist 2018, Places-LT, read by tf.data) becomes a folder of ArrayRecord files
(``ride_jax.data.records``) that grain reads at random: train on it with
``--config.dataset.cache=FOLDER`` (exact epochs, the official transforms on PIL images,
no TensorFlow).

Every ``--NAME=VALUE`` other than ``--dataset`` and ``--out`` is an argument of the
dataset's builder (``ride_jax.data.registry``); an unknown one is an error listing the
valid ones. Next to the cache it writes ``<out>.json``: class counts, the fingerprint
of the selected images and the selection parameters. ``ride_jax.data.load_cache(out)``
(NumPy only) reads it back, e.g. on a GPU machine without TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any, Sequence

from ride_jax.data.base import save_cache
from ride_jax.data.registry import DATASETS, IN_MEMORY, dataset_arguments, load_dataset

# The streamed datasets read by tf.data, which prepare copies into ArrayRecord files.
TFDATA_STREAMED = ("imagenet_lt", "inat2018", "places_lt")


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_dataset_args(name: str, items: Sequence[str]) -> dict[str, Any]:
    """``['--ratio=100', '--path=x.zip']`` -> ``{'ratio': 100, 'path': 'x.zip'}``, checked."""
    valid = dataset_arguments(name)
    kwargs: dict[str, Any] = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"expected --NAME=VALUE, got {item!r}")
        key, value = item[2:].split("=", 1)
        if key not in valid:
            raise ValueError(f"dataset {name!r} has no argument {key!r}; valid arguments are "
                             f"{sorted(valid)}")
        kwargs[key] = _parse_value(value)
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ride_jax.data.prepare", description=__doc__.split("\n")[0],
        epilog="Other --NAME=VALUE options are passed to the dataset builder.")
    parser.add_argument("--dataset", required=True,
                        help=f"one of {list(IN_MEMORY) + list(TFDATA_STREAMED)}")
    parser.add_argument("--out", required=True, help="the .npz cache (in-memory datasets) "
                        "or the records folder (streamed ones) to write")
    args, rest = parser.parse_known_args(argv)
    if args.dataset not in IN_MEMORY + TFDATA_STREAMED:
        kind = ("is read from its files already" if args.dataset in DATASETS
                else "is unknown")
        parser.error(f"dataset {args.dataset!r} {kind}; valid choices are "
                     f"{list(IN_MEMORY) + list(TFDATA_STREAMED)}")
    streamed = args.dataset in TFDATA_STREAMED
    if streamed and os.path.exists(args.out):
        parser.exit(2, f"error: --out={args.out!r} exists; give a new folder\n")
    try:
        kwargs = parse_dataset_args(args.dataset, rest)
        dataset = load_dataset(args.dataset, **kwargs)
        if streamed:
            from ride_jax.data.records import write_records
            out = write_records(dataset, args.out)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    if streamed:
        print(f"wrote {out}: {dataset.num_train} train / {dataset.num_test} test records, "
              f"{dataset.num_classes} classes; train with --config.dataset.cache={out}")
        return 0
    path = save_cache(dataset, args.out)
    summary = dataset.describe()
    summary["builder_arguments"] = kwargs
    with open(path[:-4] + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    counts = summary["train_counts"]
    print(f"wrote {path}: {summary['num_train']} train / {summary['num_test']} test images "
          f"{tuple(summary['image_shape'])}, {summary['num_classes']} classes, counts "
          f"{counts[0]}..{counts[-1]}, fingerprint {summary['fingerprint'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
