"""XLA compiler options of the jitted programs, chosen outside ``jit`` (``config.cpu_convolutions``).

On a CPU, jaxlib 0.10 hands every convolution to a YNNPACK fusion by default. For the
*kernel gradient* of a 3x3 convolution (a convolution whose "kernel" is the whole
output-gradient map) that is 2-8x slower than XLA's own Eigen convolution: one
32x32x16 conv at batch 128 took 165-300 ms against ~40 ms here (BENCHMARKS.md). The
forward and input-gradient convolutions are on par, and the RIDE train step is 1.6-1.8x
faster without YNNPACK's convolutions (``benchmarks/train_step.py --cpu-convolutions
eigen,xla_default``). So ride_jax compiles its train and eval steps on a CPU with
YNNPACK's convolution fusions off (its reductions and dots kept), per ``jax.jit``
(``compiler_options``), without touching ``XLA_FLAGS`` or other programs in the process.

``cpu_convolutions``:

* ``'eigen'`` (default): ``xla_cpu_experimental_ynn_fusion_type`` = reductions and dots
  only, on the CPU backend: convolutions are XLA's Eigen ones. Other backends: nothing.
  Same function: the gradients of a RIDE ResNet-32 are as close to a float64 reference
  as the default compile's (tested).
* ``'xla_default'``: whatever the installed XLA chooses.

A jaxlib that does not know the option (a future one may rename it) gets nothing, with
one warning: the program is the same, only the speed-up is lost.
"""

from __future__ import annotations

import functools

import jax
from absl import logging

from ride_jax.losses import check_choice

CPU_CONVOLUTIONS = ("eigen", "xla_default")
# jaxlib 0.10's default YNNPACK fusions are convolutions, dots and reductions; keep the
# reductions (YNNPACK's sums are the accurate ones: with XLA's own, BatchNorm statistics
# over 16k values lose ~1e-3 relative in the gradients) and the dots.
_EIGEN = {"xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _accepted(items: tuple) -> bool:
    """Whether this jaxlib's CPU compiler knows the options (compiles a tiny program once)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(
            jax.ShapeDtypeStruct((), "float32")).compile()
        return True
    except Exception as e:                      # jaxlib without the option
        logging.warning("cpu_convolutions: this jaxlib does not take the compiler options %s "
                        "(%s); compiling with XLA's defaults", dict(items),
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False


def compiler_options(cpu_convolutions: str = "eigen",
                     backend: str | None = None) -> dict[str, str] | None:
    """The ``compiler_options`` for ``jax.jit`` of a train or eval step.

    Args:
      cpu_convolutions: ``'eigen'`` | ``'xla_default'`` (see the module docstring).
      backend: the platform the program compiles for (default ``jax.default_backend()``).

    Returns:
      A dict for ``jax.jit(..., compiler_options=...)``, or None (XLA's defaults).

    Raises:
      ValueError: ``cpu_convolutions`` is not one of :data:`CPU_CONVOLUTIONS`.
    """
    check_choice("cpu_convolutions", cpu_convolutions, CPU_CONVOLUTIONS)
    backend = jax.default_backend() if backend is None else backend
    if cpu_convolutions == "xla_default" or backend != "cpu":
        return None
    return dict(_EIGEN) if _accepted(tuple(sorted(_EIGEN.items()))) else None
