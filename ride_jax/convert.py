"""Load official RIDE PyTorch checkpoints into ride_jax (and write them back).

``from_official(state_dict, arch=..., num_classes=..., num_experts=...)`` turns the
``state_dict`` of an official ``ResNet32Model`` / ``ResNet10Model`` / ``ResNet50Model`` /
``ResNeXt50Model`` (RIDE-LongTailRecognition, ``model/ldam_drw_resnets`` and
``model/fb_resnets``) into ``(model, variables)``::

    model, variables = from_official('checkpoint-epoch200.pth', arch='resnet32',
                                     num_classes=100, num_experts=3)
    logits = model.apply(variables, images_nhwc)['logits']

Sources: a mapping of official names to arrays / torch tensors, a ``.npz`` of one, or a
torch checkpoint (of which the ``'state_dict'`` entry of a checkpoint dict is used).
A zip checkpoint (what ``torch.save`` writes since torch 1.6) is read without torch by
``ride_jax.torch_pickle.load_pth``, which runs no pickled code (the official trainer's
pickled config comes back as an inert stub). Only a legacy (torch < 1.6) file goes
through ``torch.load`` and needs torch (and ``allow_pickle=True`` if it pickles more
than tensors).

Name mapping (official -> ride_jax; a ``module.`` / ``backbone.`` prefix is stripped):

* ``conv1`` / ``bn1`` / ``layer1.j`` (/ ``layer2.j`` for ImageNet) -> ``trunk``
* ``layer2s.e.j`` / ``layer3s.e.j`` (CIFAR) or ``layer3s.e.j`` / ``layer4s.e.j`` (ImageNet)
  -> ``experts/layer2_j`` ... at index e of the stacked expert axis; a 1-expert CIFAR
  model (``ResNet_s``) uses ``layer2.j`` / ``layer3.j`` / ``linear``.
* ``linears.e.weight`` (NormedLinear, already ``(in, out)``) -> ``experts/linear/kernel[e]``
* conv weights OIHW -> HWIO; BN ``weight/bias/running_mean/running_var`` ->
  ``scale/bias`` (params) and ``mean/var`` (batch_stats); ``downsample.0`` / ``.1`` ->
  ``downsample/conv`` / ``downsample/bn``; ``num_batches_tracked`` is dropped.

Router weights of the stage-2 EA models (``expert_help_pred*``) are not part of these
models and are reported as ignored.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax import torch_pickle
from ride_jax.models.ride import RIDEModel, Variables, create_model

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_IGNORED = re.compile(r"(num_batches_tracked$|^expert_help_pred)")


def _load_state_dict(source: Any, allow_pickle: bool) -> dict[str, np.ndarray]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".npz"):
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        if torch_pickle.is_torch_zip(path):  # torch >= 1.6 format: no torch, no code run
            obj = torch_pickle.load_pth(path)
        else:
            obj = _torch_load_legacy(path, allow_pickle)
        source = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
        if isinstance(source, torch_pickle.PickledObject):  # e.g. a whole pickled nn.Module
            raise TypeError(f"{path} holds a pickled {source.qualname()} object where the "
                            "state_dict should be; the reader does not run pickled code")
    if not isinstance(source, Mapping):
        raise TypeError(f"state_dict must be a mapping, a .pth or a .npz path, got {type(source)}")
    out = {}
    for name, value in source.items():
        if isinstance(value, torch_pickle.PickledObject):
            raise TypeError(f"state_dict entry {name!r} is a {value.qualname()} this reader "
                            "cannot turn into an array")
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu().numpy()
        out[name] = np.asarray(value)
    return out


def _torch_load_legacy(path: str, allow_pickle: bool) -> Any:
    """``torch.load`` for what the torch-free reader does not read (torch < 1.6 files)."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError(
            f"{path} is not a zip checkpoint: it is in the legacy format of torch < 1.6, "
            "which needs torch to read (pip install torch); or re-save it with a recent "
            "torch, or save the state dict as .npz ({name: tensor.numpy()}) and pass "
            "that") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"could not read {path} with torch.load(weights_only={not allow_pickle}): {e}. "
            "Official checkpoints also pickle their config; if you trust the file, pass "
            "allow_pickle=True") from e


def _strip(name: str) -> str:
    for prefix in ("module.", "backbone."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _official_name(path: tuple[str, ...], model: RIDEModel, expert: int | None) -> str:
    """Official state_dict name of one ride_jax leaf.

    ``path`` is ``(collection, part, module..., leaf)``, e.g.
    ``('params', 'experts', 'layer2_0', 'conv1', 'kernel')``.
    """
    _, part, *modules, leaf = path
    names = []
    for m in modules:
        stage = re.fullmatch(r"layer(\d)_(\d+)", m)
        if stage and part == "experts":
            if model.num_experts == 1 and model.arch == "resnet32":
                names.append(f"layer{stage[1]}.{stage[2]}")
            else:
                names.append(f"layer{stage[1]}s.{expert}.{stage[2]}")
        elif stage:
            names.append(f"layer{stage[1]}.{stage[2]}")
        elif m == "linear" and part == "experts":
            single = model.num_experts == 1 and model.arch == "resnet32"
            names.append("linear" if single else f"linears.{expert}")
        elif m == "conv" and names and names[-1] == "downsample":
            names.append("0")
        elif m == "bn" and names and names[-1] == "downsample":
            names.append("1")
        else:
            names.append(m)
    leaf_name = _LEAF[leaf]
    return ".".join(names + [leaf_name])


def _to_official_layout(path, value: np.ndarray, use_norm: bool) -> np.ndarray:
    """ride_jax array -> official layout."""
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if path[-1] == "kernel" and path[-2] == "linear" and not use_norm:
        return value.T  # Dense (in, out) -> nn.Linear (out, in)
    return value


def _from_official_layout(path, value: np.ndarray, use_norm: bool) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if path[-1] == "kernel" and path[-2] == "linear" and not use_norm:
        return value.T
    return value


def _leaf_paths(tree) -> list[tuple[tuple[str, ...], Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(tuple(k.key for k in path), leaf) for path, leaf in flat]


def _template(model: RIDEModel) -> Variables:
    size = model.default_image_size
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def _uses_norm(model: RIDEModel) -> bool:
    return bool(getattr(model.expert, "use_norm", True))


def from_official(state_dict: Any, *, arch: str, num_classes: int, num_experts: int,
                  reduce_dimension: bool = True, use_norm: bool = True,
                  expert_impl: str = "loop", dtype: Any = None, allow_pickle: bool = False,
                  **model_kwargs) -> tuple[RIDEModel, Variables]:
    """Converts an official RIDE state_dict into ``(model, variables)``.

    Args:
      state_dict: a mapping of official names to numpy arrays or torch tensors, a
        path to a ``.npz`` of such a mapping, or a path to a ``.pth`` checkpoint (a
        checkpoint dict's ``'state_dict'`` entry is used). Zip checkpoints (torch >= 1.6)
        are read without torch and without running pickled code; legacy ones need torch.
      arch, num_classes, num_experts, reduce_dimension, use_norm: as the official
        model was built (see ``ride_jax.models.create_model``); they must match the
        checkpoint or a ValueError names the first mismatching tensor.
      expert_impl: ``'loop'`` (default) or ``'vmap'`` for the returned model.
      dtype: dtype of the returned arrays (default: float64 if ``jax_enable_x64`` is
        on and the checkpoint is float64, else float32).
      allow_pickle: let ``torch.load`` unpickle arbitrary objects when it reads a legacy
        (torch < 1.6) checkpoint (official training checkpoints pickle their config).
        Only for files you trust. Not needed for zip checkpoints.
      **model_kwargs: passed to ``create_model`` (e.g. ``layer3_dim``).

    Returns:
      ``(model, variables)`` with ``variables = {'params': ..., 'batch_stats': ...}``.
    """
    sd = {_strip(k): v for k, v in _load_state_dict(state_dict, allow_pickle).items()}
    model = create_model(arch, num_classes=num_classes, num_experts=num_experts,
                         reduce_dimension=reduce_dimension, use_norm=use_norm,
                         expert_impl=expert_impl, **model_kwargs)
    template = _template(model)
    used = set()
    leaves = []
    for path, spec in _leaf_paths(template):
        experts = range(num_experts) if path[1] == "experts" else [None]
        parts = []
        for e in experts:
            name = _official_name(path, model, e)
            if name not in sd:
                raise ValueError(
                    f"the state_dict has no {name!r} (needed for {'/'.join(path)}); is it a "
                    f"{arch} with num_experts={num_experts}, num_classes={num_classes}, "
                    f"reduce_dimension={reduce_dimension}, use_norm={use_norm}?")
            used.add(name)
            parts.append(_from_official_layout(path, sd[name], use_norm))
        value = np.stack(parts) if path[1] == "experts" else parts[0]
        if value.shape != spec.shape:
            raise ValueError(f"{'/'.join(path)}: shape {value.shape} from the state_dict, "
                             f"the model expects {spec.shape}; check the model arguments")
        target = dtype or (value.dtype if jax.config.jax_enable_x64 else jnp.float32)
        leaves.append(jnp.asarray(value, dtype=target))
    unused = sorted(k for k in sd if k not in used)
    ignored = [k for k in unused if _IGNORED.search(k)]
    unknown = [k for k in unused if not _IGNORED.search(k)]
    if unknown:
        raise ValueError(f"{len(unknown)} state_dict entries have no place in a {arch} with "
                         f"num_experts={num_experts}: {unknown[:8]}")
    if any(k.startswith("expert_help_pred") for k in ignored):
        warnings.warn("router (expert_help_pred*) weights in the checkpoint were ignored: "
                      "the stage-1 model has no router", stacklevel=2)
    treedef = jax.tree_util.tree_structure(template)
    return model, jax.tree_util.tree_unflatten(treedef, leaves)


def to_official(tree: Variables, model: RIDEModel, *, prefix: str = "backbone.") -> dict:
    """The inverse mapping: ride_jax variables (or a gradient with the same
    ``{'params': ...}`` structure) -> ``{official_name: np.ndarray}``."""
    use_norm = _uses_norm(model)
    out = {}
    for path, value in _leaf_paths(tree):
        value = np.asarray(value)
        if path[1] == "experts":
            for e in range(model.num_experts):
                out[prefix + _official_name(path, model, e)] = _to_official_layout(
                    path, value[e], use_norm)
        else:
            out[prefix + _official_name(path, model, None)] = _to_official_layout(
                path, value, use_norm)
    return out
