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

from ride_jax import compiler, losses
from ride_jax.data import long_tail_counts
from ride_jax.models import create_model


def make_step(model, tx, vec, diversity_factor=-0.45, jit=True, compiler_options=None):
    """(params, batch_stats, opt_state, images, labels) -> same + loss (jitted unless jit=False).

    ``compiler_options``: for ``jax.jit`` (``ride_jax.compiler.compiler_options``).
    """

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

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=compiler_options)


def host_variables(model, images, seed: int = 0) -> dict:
    """Variables of ``model`` drawn on the host, without compiling its initialiser.

    The shapes come from ``jax.eval_shape(model.init, ...)``; kernels are He-normal
    (fan-in over the kernel's last axes, stacked experts first), BN scales and running
    variances 1, everything else 0. The train and eval programs are the same as with
    ``model.init`` (only the starting values differ), and on a CPU the jitted
    initialiser of a big network takes tens of seconds to compile.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[-4:-1])) if len(shape) >= 4 else shape[-2]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        return jnp.asarray(value, leaf.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def prepare_model(model, vec, batch: int, *, image_shape=(32, 32, 3),
                  num_classes: int = 100, diversity_factor: float = -0.45,
                  weight_decay: float = 5e-4, host_init: bool = False,
                  cpu_convolutions: str = "eigen"):
    """Compiles the jitted train step of ``model``: (compile s of the first call, ``run``).

    ``run(steps)`` times ``steps`` more steps and returns images/s. Random
    ``image_shape`` images and labels in ``num_classes`` already on the device, coupled
    weight decay and nesterov SGD (optax), the RIDE loss with ``vec``.
    ``host_init``: variables from :func:`host_variables` instead of ``jax.jit(model.init)``.
    ``cpu_convolutions``: as the trainer's ``config.cpu_convolutions`` (``ride_jax.compiler``).
    """
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch,) + tuple(image_shape), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, num_classes, batch))
    if host_init:
        variables = host_variables(model, images)
    else:
        variables = jax.jit(model.init)(jax.random.key(0), images)
    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(0.1, momentum=0.9, nesterov=True))
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
    step = make_step(model, tx, vec, diversity_factor=diversity_factor,
                     compiler_options=compiler.compiler_options(cpu_convolutions))

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            *new_state, loss = step(*state, images, labels)
            state[:] = new_state
        loss.block_until_ready()
        rate = steps * batch / (time.perf_counter() - t0)
        if not np.isfinite(float(loss)):
            raise FloatingPointError("non-finite loss")
        return rate

    t0 = time.perf_counter()
    run(1)
    return time.perf_counter() - t0, run


def bench_model(model, vec, batch: int, steps: int, repeats: int, **kwargs):
    """(compile s of the first call, images/s of ``repeats`` runs of ``steps`` steps);
    ``kwargs`` as :func:`prepare_model`."""
    compile_s, run = prepare_model(model, vec, batch, **kwargs)
    return compile_s, [run(steps) for _ in range(repeats)]


def _ride32(num_experts: int, impl: str, dtype=None, fusion_barriers: bool = False):
    counts = long_tail_counts(100, 500, ratio=100)  # CIFAR-100-LT
    vec = losses.ride_schedule(counts, epoch=170, reweight_epoch=160, reweight_factor=0.05)
    model = create_model("resnet32", num_classes=100, num_experts=num_experts,
                         reduce_dimension=True, expert_impl=impl, dtype=dtype,
                         fusion_barriers=fusion_barriers)
    return model, vec


def trainer_barriers() -> bool:
    """What the trainer uses here: ``config.cpu_fusion_barriers`` (True) on a CPU only."""
    return jax.default_backend() == "cpu"


def parse_barriers(text: str) -> tuple[bool, ...]:
    """``'auto'`` (the trainer's choice here), or a comma list of ``on``/``off``."""
    if text.strip() == "auto":
        return (trainer_barriers(),)
    values = {"on": True, "off": False}
    out = []
    for x in (x.strip() for x in text.split(",") if x.strip()):
        if x not in values:
            raise ValueError(f"fusion barriers: {x!r} is not one of auto, on, off")
        out.append(values[x])
    return tuple(out)


def bench_side_by_side(num_experts: int, impl: str, batch: int, steps: int, repeats: int,
                       dtype=None, host_init: bool = False,
                       cpu_convolutions=("eigen",), fusion_barriers=None) -> list[dict]:
    """One row per (``cpu_convolutions``, ``fusion_barriers``) choice, their timed runs
    interleaved (A B A B ...) so that a noisy machine slows them alike and their ratio
    means something. ``fusion_barriers``: booleans (None: the trainer's choice here)."""
    barriers = (trainer_barriers(),) if fusion_barriers is None else tuple(fusion_barriers)
    variants = [(conv, b) for conv in cpu_convolutions for b in barriers]
    prepared = {}
    try:
        for conv, b in variants:
            model, vec = _ride32(num_experts, impl, dtype, fusion_barriers=b)
            prepared[conv, b] = prepare_model(model, vec, batch, host_init=host_init,
                                              cpu_convolutions=conv)
        rates = {v: [] for v in variants}
        for _ in range(repeats):
            for v in variants:
                rates[v].append(prepared[v][1](steps))
    except FloatingPointError:
        raise FloatingPointError(f"non-finite loss for E={num_experts} impl={impl}") from None
    return [{"experts": num_experts, "impl": impl, "batch": batch, "cpu_convolutions": v[0],
             "fusion_barriers": v[1], "compile_s": round(prepared[v][0], 2),
             "images_per_s": round(statistics.median(rates[v]), 1),
             "images_per_s_all": [round(r, 1) for r in rates[v]]}
            for v in variants]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="1,2,3,4")
    parser.add_argument("--impls", default="vmap,loop")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cpu-convolutions", default="eigen",
                        help="comma-separated config.cpu_convolutions choices, timed side by "
                             f"side ({', '.join(compiler.CPU_CONVOLUTIONS)}; CPU only)")
    parser.add_argument("--fusion-barriers", default="auto",
                        help="'auto' (the trainer's choice: on for a CPU) or a comma list of "
                             "on/off timed side by side (config.cpu_fusion_barriers)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    try:
        barriers = parse_barriers(args.fusion_barriers)
    except ValueError as e:
        parser.error(f"--fusion-barriers: {e}")
    convs = tuple(x.strip() for x in args.cpu_convolutions.split(",") if x.strip())
    for conv in convs:
        if conv not in compiler.CPU_CONVOLUTIONS:
            parser.error(f"--cpu-convolutions: {conv!r} is not one of "
                         f"{', '.join(compiler.CPU_CONVOLUTIONS)}")

    dtype = None if args.dtype == "float32" else jnp.bfloat16
    rows = []
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {[d.device_kind for d in jax.devices()]}, python {platform.python_version()}")
    print(f"# RIDE ResNet-32 CIFAR-100 train step, batch {args.batch}, {args.dtype}, "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'E':>2} {'impl':>5} {'cpu_conv':>12} {'barriers':>8} {'compile_s':>10} "
          f"{'images/s':>10}  runs")
    for e in [int(x) for x in args.experts.split(",")]:
        for impl in args.impls.split(","):
            for row in bench_side_by_side(e, impl, args.batch, args.steps, args.repeats, dtype,
                                          cpu_convolutions=convs, fusion_barriers=barriers):
                rows.append(row)
                print(f"{e:>2} {impl:>5} {row['cpu_convolutions']:>12} "
                      f"{'on' if row['fusion_barriers'] else 'off':>8} "
                      f"{row['compile_s']:>10.1f} {row['images_per_s']:>10.1f}  "
                      f"{row['images_per_s_all']}", flush=True)
    if args.json:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind, "dtype": args.dtype,
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    from ride_jax.allocator import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    main()
