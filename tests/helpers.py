"""Helpers shared by the end-to-end tests (importable: pytest puts tests/ on sys.path)."""

import os
import pathlib
import subprocess
import sys

from ride_jax.configlib import load

ROOT = pathlib.Path(__file__).resolve().parents[1]


def synthetic_config(arg: str = "experts=2", **over):
    """The synthetic smoke recipe (16x16, 159 images, batch 32, 2 epochs of 4 steps with
    ``data.remainder='drop'``) with ``arg`` and dotted overrides (``**{'a.b': v}``)."""
    c = load(ROOT / "configs" / "synthetic_lt.py", "smoke," + arg)
    c.unlock()
    c.data.remainder = "drop"
    for key, value in over.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    c.lock()
    return c


def run_main(workdir, config, extra=(), **kw):
    """``python -m ride_jax.main --config=config --workdir=workdir *extra`` on the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    kw.setdefault("cwd", ROOT)
    return subprocess.run([sys.executable, "-m", "ride_jax.main", f"--config={config}",
                           f"--workdir={workdir}", *extra], env=env,
                          capture_output=True, text=True, timeout=900, **kw)


def ride_train_grad(model, vec, diversity_factor=-0.45):
    """``(params, batch_stats, images, labels) -> ((loss, (expert_logits, new batch_stats)),
    grads)``: the RIDE loss of a train-mode forward (``vec``: ``losses.ride_schedule``)."""
    import jax

    from ride_jax import losses

    def loss_fn(params, batch_stats, images, labels):
        out, state = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                 train=True)
        loss, _ = losses.ride_loss(out["expert_logits"], labels, margins=vec.margins,
                                   class_weights=vec.class_weights,
                                   temperatures=vec.temperatures,
                                   diversity_factor=diversity_factor)
        return loss, (out["expert_logits"], state["batch_stats"])
    return jax.value_and_grad(loss_fn, has_aux=True)


# A sitecustomize that makes tensorflow and tensorflow_datasets unimportable in a
# subprocess (and in any process it re-executes), as on the base install or the TF-less
# GPU image, whatever this environment has installed. ``sys.modules[name] = None`` makes
# ``import`` fail ("import of tensorflow halted") and ``importlib.util.find_spec`` return
# None, as for a module that is not installed (etils asks that to decide whether TF is
# there); each ``import`` statement naming them is listed in ``sys.ride_jax_tf_tried``.
NO_TF_SITECUSTOMIZE = """\
import builtins, sys

sys.ride_jax_tf_tried = []
for _name in ("tensorflow", "tensorflow_datasets"):
    sys.modules[_name] = None
_import = builtins.__import__


def _recording_import(name, *args, **kwargs):
    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
        sys.ride_jax_tf_tried.append(name)
    return _import(name, *args, **kwargs)


builtins.__import__ = _recording_import
"""


def no_tf_env(tmp_path, **extra):
    """``os.environ`` on the CPU with TensorFlow blocked (:data:`NO_TF_SITECUSTOMIZE`)."""
    site = pathlib.Path(tmp_path) / "no_tf"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TF_SITECUSTOMIZE)
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
                **extra)


def run_without_tf(tmp_path, *args, timeout=300):
    """``python *args`` from the repository root with TensorFlow unimportable."""
    return subprocess.run([sys.executable, *args], env=no_tf_env(tmp_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
