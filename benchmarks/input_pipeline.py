"""Images/s of the input pipelines, and whether they keep up with the train step.

    python benchmarks/input_pipeline.py                     # in-memory loader + train step
    python benchmarks/input_pipeline.py --streaming         # also the tf.data loader at 224

In-memory loader (``ride_jax.data.loader``): a CIFAR-100-LT-sized uint8 set (10,847
images, 32x32x3, ``synthetic_lt``) on the device; for each augmentation recipe and
batch size, a whole epoch of batches is made (host-side index and parameter draws,
then gather + crop/flip/rotate + normalise on the device). The RIDE ResNet-32 (3
experts; compiled as the trainer compiles it here: ``config.cpu_convolutions`` and
``config.cpu_fusion_barriers`` on a CPU) train step is then timed on the same batches four
ways, interleaved in one process: alone (batches made beforehand), fed (the loader's
iterator, one extra dispatch per step), fused (``plan_batch`` inside the jitted train
step) and scanned (``config.steps_per_call``: the loader's ``epoch_calls`` stacks all the
timed steps' batches in one call, and one jitted ``lax.scan`` runs them); "fed / alone"
etc. say how much the loader slows training (1.0 = not at all) or the scan speeds it up.

Streaming loader (``--streaming``, needs TensorFlow): tf.data reading 500x375 JPEG
files, decoding them and applying the official ImageNet-LT train transform
(RandomResizedCrop 224, flip, ColorJitter) or test transform (Resize 256, CenterCrop
224); host-side uint8 batches, per CPU core.

Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import make_step, trainer_barriers  # noqa: E402

from ride_jax import compiler, losses  # noqa: E402
from ride_jax.data import make_loader  # noqa: E402
from ride_jax.data.loader import plan_batch  # noqa: E402
from ride_jax.data.synthetic import synthetic_lt  # noqa: E402
from ride_jax.models import create_model  # noqa: E402


def _median_rate(fn, repeats):
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_loader(ds, batch, augment, repeats, steps=None):
    loader = make_loader(ds, batch, augment=augment, remainder="drop")
    steps = steps or loader.steps_per_epoch
    jax.block_until_ready(next(loader.epoch(0)))            # compile

    def run():
        n, last = 0, None
        for k, b in enumerate(loader.epoch(1)):
            if k == steps:
                break
            n += b["label"].shape[0]
            last = b
        jax.block_until_ready(last)
        return n
    return _median_rate(run, repeats)


def bench_train(ds, batch, steps, repeats, experts=3, verbose=False):
    vec = losses.ride_schedule(ds.train_counts, epoch=170, reweight_epoch=160,
                               reweight_factor=0.05)
    model = create_model("resnet32", num_classes=ds.num_classes, num_experts=experts,
                         fusion_barriers=trainer_barriers())
    options = compiler.compiler_options("eigen")
    loader = make_loader(ds, batch, augment="ride", remainder="drop")
    first = next(loader.epoch(0))
    variables = jax.jit(model.init)(jax.random.key(0), first["image"])
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9,
                                                                nesterov=True))
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
    step = make_step(model, tx, vec, compiler_options=options)
    batches = [b for _, b in zip(range(steps), loader.epoch(1))]

    def alone():
        for b in batches:
            *new, loss = step(*state, b["image"], b["label"])
            state[:] = new
        loss.block_until_ready()
        return steps * batch

    def fed():
        for _, b in zip(range(steps), loader.epoch(2)):
            *new, loss = step(*state, b["image"], b["label"])
            state[:] = new
        loss.block_until_ready()
        return steps * batch
    # Fused: the loader's plan_batch inside the jitted train step, one dispatch per step.
    raw_step = make_step(model, tx, vec, jit=False)

    def fused_fn(params, batch_stats, opt_state, data, plan, step_id):
        b = plan_batch(data, plan, step_id, aug=loader.augment)
        return raw_step(params, batch_stats, opt_state, b["image"], b["label"])
    fused_step = jax.jit(fused_fn, donate_argnums=(0, 1, 2), compiler_options=options)

    # Scanned: every timed step in one call (stacked batches from epoch_calls), unrolled
    # on a CPU as the trainer does (ride_jax.train.scan_unroll; not imported: it needs
    # ml_collections, which a bare device image lacks).
    unroll = True if jax.default_backend() == "cpu" else 1
    def scan_fn(params, batch_stats, opt_state, images, labels):
        def body(carry, xs):
            *new, loss = raw_step(*carry, *xs)
            return tuple(new), loss
        carry, loss = jax.lax.scan(body, (params, batch_stats, opt_state), (images, labels),
                                   unroll=unroll)
        return (*carry, loss[-1])
    scan_step = jax.jit(scan_fn, donate_argnums=(0, 1, 2), compiler_options=options)

    def fused():
        plan, _, _ = loader.epoch_plan(2)
        data = loader.data
        for s in range(steps):
            *new, loss = fused_step(*state, data, plan, loader.step_id(s))
            state[:] = new
        loss.block_until_ready()
        return steps * batch

    def scanned():
        done = 0
        for k, b in loader.epoch_calls(3, steps_per_call=steps, stop=steps):
            *new, loss = (scan_step if k > 1 else step)(*state, b["image"], b["label"])
            state[:] = new
            done += k
        loss.block_until_ready()
        return done * batch

    runs = {"alone": alone, "fed": fed, "fused": fused, "scanned": scanned}
    for fn in runs.values():                                  # compile and warm up
        fn()
    rates = {k: [] for k in runs}
    for _ in range(repeats):                                  # interleaved, side by side
        for k, fn in runs.items():
            rates[k].append(_median_rate(fn, 1))
    if verbose:
        for k, r in rates.items():
            print(f"#   {k:<6} runs {[round(x) for x in r]}")
    return {k: statistics.median(r) for k, r in rates.items()}


def bench_streaming(batch, repeats, steps, workdir):
    """Host-side tf.data throughput (uint8 batches, before the device) at 224x224."""
    import tensorflow as tf
    from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
    from ride_jax.data.streaming import FileListSplit, StreamingDataset
    rng = np.random.default_rng(0)
    n = 256
    os.makedirs(workdir, exist_ok=True)
    paths = []
    for k in range(n):   # smooth-ish 500x375 content so the JPEGs have a realistic size
        base = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        img = tf.image.resize(base[None], (375, 500), "bilinear")[0]
        path = f"img_{k:04d}.jpg"
        tf.io.write_file(os.path.join(workdir, path),
                         tf.io.encode_jpeg(tf.cast(img, tf.uint8), quality=90))
        paths.append(path)
    split = FileListSplit(workdir, tuple(paths), np.zeros(n, np.int64))
    ds = StreamingDataset(name="bench", num_classes=1, class_names=("x",),
                          train_counts=np.array([n]), num_test=n, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, info={}, train_source=split, test_source=split)
    rows = []
    for mode in ("train", "eval"):
        pipe = ds.train_tf(batch, seed=0) if mode == "train" else ds.eval_tf(batch).repeat()
        it = iter(pipe)
        next(it)

        def run():
            for _ in range(steps):
                next(it)
            return steps * batch
        rate = _median_rate(run, repeats)
        rows.append({"pipeline": f"streaming {mode} 224", "batch": batch,
                     "images_per_s": round(rate, 1),
                     "images_per_s_per_core": round(rate / (os.cpu_count() or 1), 1)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--stream-steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    parser.add_argument("--skip-loader", action="store_true", help="skip the loader table")
    parser.add_argument("--skip-train", action="store_true", help="skip the train-step table")
    args = parser.parse_args(argv)

    ds = synthetic_lt(num_classes=100, img_max=500, ratio=100)   # CIFAR-100-LT r100 sizes
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, devices "
          f"{[d.device_kind for d in jax.devices()]}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"# in-memory loader: {len(ds.train)} images 32x32x3, median of {args.repeats}")
    print(f"{'pipeline':<28} {'batch':>6} {'images/s':>12}")
    rows = []
    for batch in [] if args.skip_loader else [int(b) for b in args.batches.split(",")]:
        for aug in ("none", "ldam", "ride"):
            rate = bench_loader(ds, batch, aug, args.repeats)
            rows.append({"pipeline": f"in-memory {aug}", "batch": batch,
                         "images_per_s": round(rate, 1)})
            print(f"{'in-memory ' + aug:<28} {batch:>6} {rate:>12.1f}", flush=True)
    print(f"# RIDE ResNet-32 (3 experts) train step, {args.train_steps} steps, alone vs fed by "
          f"the loader ('ride' augmentation)")
    print(f"{'batch':>6} {'alone img/s':>12} {'fed img/s':>12} {'fused img/s':>12} "
          f"{'scanned img/s':>14} {'fed/alone':>10} {'fused/alone':>12} {'scanned/fed':>12}")
    for batch in [] if args.skip_train else [int(b) for b in args.batches.split(",")]:
        r = bench_train(ds, batch, args.train_steps, args.repeats, verbose=args.verbose)
        for k in ("alone", "fed", "fused", "scanned"):
            rows.append({"pipeline": f"train step {k}", "batch": batch,
                         "images_per_s": round(r[k], 1)})
        print(f"{batch:>6} {r['alone']:>12.1f} {r['fed']:>12.1f} {r['fused']:>12.1f} "
              f"{r['scanned']:>14.1f} {r['fed'] / r['alone']:>10.3f} "
              f"{r['fused'] / r['alone']:>12.3f} {r['scanned'] / r['fed']:>12.3f}", flush=True)
    if args.streaming:
        print(f"# streaming tf.data loader, JPEG 500x375 -> 224, {os.cpu_count()} CPUs")
        print(f"{'pipeline':<28} {'batch':>6} {'images/s':>12} {'per core':>10}")
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            rows_s = bench_streaming(64, args.repeats, args.stream_steps, tmp)
        for row in rows_s:
            rows.append(row)
            print(f"{row['pipeline']:<28} {row['batch']:>6} {row['images_per_s']:>12.1f} "
                  f"{row['images_per_s_per_core']:>10.1f}", flush=True)
    if args.json:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    from ride_jax.allocator import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    main()
