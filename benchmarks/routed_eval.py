"""Images/s of routed RIDE-EA inference against running every expert.

    python benchmarks/routed_eval.py                          # synthetic routers, E = 3
    python benchmarks/routed_eval.py --go-on 0.1,0.3,0.6,1.0 --batch 512 --json out.json
    python benchmarks/routed_eval.py --run runs/fm500_ride3_ea  # a trained stage-2 run

For each setting the script times, side by side in one process (so ratios are
meaningful on a noisy machine), the median images/s over ``--repeats`` passes of
``--batches`` batches of:

* ``all``: the plain network with every expert (``model.apply``);
* ``routed``: :func:`ride_jax.models.routed_apply` with compaction into ``--buckets``
  static bucket sizes (the experts run only on the examples routed to them);
* ``masked``: the same routing without compaction (every expert on every example,
  then masked): what a naive port would do.

It reports the experts used, the expected MACs (``ride_jax.flops.routed_macs``, routers
included) relative to all experts, and the measured speed-up. With ``--run`` the
network, router and test images are those of a stage-2 run; otherwise the network is
randomly initialised (CIFAR ResNet-32, reduced experts, 32x32, ``--classes``) and each
router sends on the ``go-on`` fraction of the least confident examples (the router
reads only the top mean-logit value: ``logit = threshold - max_c zbar``).
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

from ride_jax import flops
from ride_jax.models import create_model, make_router, routed_apply


def _time(fn, args, batches: int, repeats: int) -> float:
    jax.block_until_ready(fn(*args))                       # compile
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(batches):
            out = fn(*args)
        jax.block_until_ready(out)
        rates.append(batches * args[1].shape[0] / (time.perf_counter() - t))
    return statistics.median(rates)


def _threshold_router(model, router, variables, images, go_on: float):
    """Router parameters sending on the ``go_on`` least confident examples."""
    out = model.apply(variables, images)
    top = np.asarray(jnp.max(out["expert_logits"][0], -1))
    threshold = float(np.quantile(top, go_on)) if go_on < 1 else 1e9
    params = router.init_params(jax.random.key(0))
    kernel = np.zeros_like(params["out"]["kernel"])
    kernel[0, 0] = -1.0                                    # minus the top mean logit
    params["out"] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray([threshold])}
    return params


def _load_run(workdir: str):
    from ml_collections import ConfigDict

    from ride_jax.checkpointing import load_run
    from ride_jax.networks import model_from_config
    from ride_jax.train import build_dataset
    cfg, variables, _ = load_run(workdir)
    config = ConfigDict(cfg)
    dataset = build_dataset(config)
    model = model_from_config(config.model, dataset.num_classes)
    router = make_router(model, dataset.image_shape, top_k=config.router.top_k,
                         hidden=config.router.hidden)
    return model, router, variables, dataset


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="", help="a finished stage-2 (router) workdir")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--go-on", default="0.1,0.3,0.6,1.0",
                    help="synthetic: fractions each router sends on")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--buckets", default="4,8", help="bucket counts to compare")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    buckets = [int(b) for b in a.buckets.split(",")]

    if a.run:
        model, router, variables, dataset = _load_run(a.run)
        from ride_jax.data.loader import make_loader
        loader = make_loader(dataset, a.batch, eval_batch_size=a.batch, augment="none")
        batch = next(iter(loader.eval_batches()))
        images = batch["image"]
        settings = [("trained router", variables)]
        image_shape = dataset.image_shape
    else:
        model = create_model(num_classes=a.classes, num_experts=a.experts)
        image_shape = (32, 32, 3)
        router = make_router(model, image_shape, top_k=min(30, a.classes))
        images = jax.random.normal(jax.random.key(1), (a.batch,) + image_shape)
        variables = model.init(jax.random.key(0), images[:1])
        settings = []
        for q in [float(x) for x in a.go_on.split(",")]:
            v = dict(variables, params=dict(variables["params"], router=_threshold_router(
                model, router, variables, images, q)))
            settings.append((f"go on {q:g}", v))

    macs = flops.model_macs(model, image_shape=image_shape)
    full = jax.jit(lambda v, x: model.apply(v, x)["logits"])
    rows = []
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"batch {a.batch}, E={model.num_experts}, {platform.node()}")
    print(f"{'setting':<16} {'used (1..E)':<22} {'MACs/all':>8} {'all img/s':>10} "
          + " ".join(f"{'routed/' + str(b):>10} {'x':>5}" for b in buckets)
          + f" {'masked':>9} {'x':>5}")
    for name, v in settings:
        out = jax.jit(lambda v, x: routed_apply(model, router, v, x))(v, images)
        used = np.bincount(np.asarray(out["num_experts"]) - 1, minlength=model.num_experts)
        used = used / used.sum()
        r = flops.routed_macs(macs, router.macs, used.tolist())
        t_all = _time(full, (v, images), a.batches, a.repeats)
        t_routed = {}
        for b in buckets:
            fn = jax.jit(lambda v, x, b=b: routed_apply(model, router, v, x,
                                                        num_buckets=b)["logits"])
            t_routed[b] = _time(fn, (v, images), a.batches, a.repeats)
        masked = jax.jit(lambda v, x: routed_apply(model, router, v, x,
                                                   compact=False)["logits"])
        t_masked = _time(masked, (v, images), a.batches, a.repeats)
        row = {"setting": name, "used": used.tolist(), "macs_ratio": r["expected"] /
               r["all_experts"], "all": t_all, "routed": t_routed, "masked": t_masked}
        rows.append(row)
        print(f"{name:<16} {' '.join(f'{u:.2f}' for u in used):<22} "
              f"{row['macs_ratio']:>8.3f} {t_all:>10.0f} "
              + " ".join(f"{t_routed[b]:>10.0f} {t_routed[b] / t_all:>5.2f}" for b in buckets)
              + f" {t_masked:>9.0f} {t_masked / t_all:>5.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "batch": a.batch,
                       "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    from ride_jax.allocator import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    main()
