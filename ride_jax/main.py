"""Command-line entry point: ``python -m ride_jax.main --config=configs/<name>.py``.

Training (configs, data, sharded train loop, checkpoints) is not implemented yet: it
arrives with the training-system issue. Until then this entry point says so and shows
what the package already provides, by building the default RIDE model (ResNet-32,
3 experts, CIFAR-100) and reporting its size and compute.
"""

from __future__ import annotations

import argparse
import sys

NOTICE = ("ride_jax: training is not available yet; it arrives with the training-system "
          "issue (configs, data pipeline, train loop, checkpoints).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ride_jax.main", description=__doc__)
    parser.add_argument("--config", default=None, help="config file (not used yet)")
    parser.add_argument("--workdir", default=None, help="output folder (not used yet)")
    args, _ = parser.parse_known_args(argv)

    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from ride_jax import losses  # pylint: disable=import-outside-toplevel
    from ride_jax.data import long_tail_counts  # pylint: disable=import-outside-toplevel
    from ride_jax.flops import model_macs  # pylint: disable=import-outside-toplevel
    from ride_jax.models import count_params, create_model  # pylint: disable=import-outside-toplevel

    print(NOTICE)
    if args.config:
        print(f"(ignoring --config={args.config} until then)")
    model = create_model("resnet32", num_classes=100, num_experts=3)
    images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    labels = jnp.arange(8) * 12
    variables = jax.jit(model.init)(jax.random.key(0), images)
    counts = long_tail_counts(100, 500, ratio=100)  # CIFAR-100-LT
    vec = losses.ride_schedule(counts, epoch=1, reweight_epoch=160, reweight_factor=0.05)
    out = jax.jit(model.apply)(variables, images)
    loss, aux = losses.ride_loss(out["expert_logits"], labels, margins=vec.margins,
                                 class_weights=vec.class_weights,
                                 temperatures=vec.temperatures, diversity_factor=-0.45)
    macs = model_macs(model)
    print("What works today: ride_jax.losses, ride_jax.models, ride_jax.convert, ride_jax.flops")
    print(f"RIDE ResNet-32, 3 experts, CIFAR-100: {count_params(variables):,} parameters, "
          f"{macs.total:,} MACs per image ({macs.with_experts(1):,} with one expert)")
    print(f"RIDE loss of the untrained model on 8 random images: {float(loss):.4f} "
          f"(per expert {[round(float(x), 4) for x in aux['per_expert_total']]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
