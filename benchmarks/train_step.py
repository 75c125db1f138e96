"""Images/s of a jitted RIDE train step: forward, RIDE loss, backward, SGD update.

    python benchmarks/train_step.py                       # E = 1..4, vmap and loop, batch 128
    python benchmarks/train_step.py --experts 3 --impls loop --batch 512 --json out.json

One step is what the trainer will run: RIDE ResNet-32 (CIFAR-100, reduce_dimension),
the RIDE loss of the CIFAR-100-LT recipe at a post-switch epoch (LDAM margins, DRW
weights, class temperatures, lambda = -0.45), coupled weight decay 5e-4 and nesterov
SGD (optax), BatchNorm in training mode, the state donated. Inputs are random images
already on the device (the input pipeline is measured elsewhere).

For every (E, impl) the script reports the compile time of the first call and the
median images/s over ``--repeats`` timed runs of ``--steps`` steps each. The
different configurations are measured side by side in one process, so their ratio is
meaningful even on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ride_jax import losses
from ride_jax.data import long_tail_counts
from ride_jax.models import create_model


def make_step(model, tx, vec, diversity_factor=-0.45, jit=True):
    """(params, batch_stats, opt_state, images, labels) -> same + loss (jitted unless jit=False)."""

    def loss_fn(params, batch_stats, images, labels):
        out, new_state = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                     train=True)
        loss, _ = losses.ride_loss(out["expert_logits"], labels, margins=vec.margins,
                                   class_weights=vec.class_weights,
                                   temperatures=vec.temperatures,
                                   diversity_factor=diversity_factor)
        return loss, new_state["batch_stats"]

    def step(params, batch_stats, opt_state, images, labels):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, batch_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2)) if jit else step


def bench_one(num_experts: int, impl: str, batch: int, steps: int, repeats: int,
              dtype=None) -> dict:
    counts = long_tail_counts(100, 500, ratio=100)  # CIFAR-100-LT
    vec = losses.ride_schedule(counts, epoch=170, reweight_epoch=160, reweight_factor=0.05)
    model = create_model("resnet32", num_classes=100, num_experts=num_experts,
                         reduce_dimension=True, expert_impl=impl, dtype=dtype)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, 32, 32, 3), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 100, batch))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    tx = optax.chain(optax.add_decayed_weights(5e-4),
                     optax.sgd(0.1, momentum=0.9, nesterov=True))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    step = make_step(model, tx, vec)

    t0 = time.perf_counter()
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, images, labels)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0

    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, images,
                                                        labels)
        loss.block_until_ready()
        rates.append(steps * batch / (time.perf_counter() - t0))
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"non-finite loss for E={num_experts} impl={impl}")
    return {"experts": num_experts, "impl": impl, "batch": batch,
            "compile_s": round(compile_s, 2), "images_per_s": round(statistics.median(rates), 1),
            "images_per_s_all": [round(r, 1) for r in rates]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="1,2,3,4")
    parser.add_argument("--impls", default="vmap,loop")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)

    dtype = None if args.dtype == "float32" else jnp.bfloat16
    rows = []
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {[d.device_kind for d in jax.devices()]}, python {platform.python_version()}")
    print(f"# RIDE ResNet-32 CIFAR-100 train step, batch {args.batch}, {args.dtype}, "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'E':>2} {'impl':>5} {'compile_s':>10} {'images/s':>10}")
    for e in [int(x) for x in args.experts.split(",")]:
        for impl in args.impls.split(","):
            row = bench_one(e, impl, args.batch, args.steps, args.repeats, dtype)
            rows.append(row)
            print(f"{e:>2} {impl:>5} {row['compile_s']:>10.1f} {row['images_per_s']:>10.1f}",
                  flush=True)
    if args.json:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind, "dtype": args.dtype,
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
