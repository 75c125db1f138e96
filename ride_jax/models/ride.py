"""RIDE multi-expert networks exposed through pure ``init`` / ``apply`` functions.

A RIDE network is a shared trunk followed by E experts with identical architecture.
The experts' parameters and BatchNorm statistics are stacked on a leading expert axis::

    variables = {'params':      {'trunk': {...}, 'experts': {... leaves [E, ...] ...}},
                 'batch_stats': {'trunk': {...}, 'experts': {... leaves [E, ...] ...}}}

Two interchangeable expert implementations read that same layout:

* ``'vmap'``: ``jax.vmap`` of one expert over the stacked variables (convolutions
  become grouped convolutions);
* ``'loop'``: a Python loop over experts, slicing expert i's variables.

They give identical outputs and gradients (tested), so a checkpoint trained with one
runs with the other.

``model.apply(variables, images, train=False)`` returns a dict::

    {'expert_logits': [E, B, C], 'logits': [B, C] (mean over experts),
     'features': [E, B, D] (pooled features before each classifier)}

With ResLT experts (``create_model(..., head='reslt')``, ``ride_jax.models.reslt``) the
dict also holds ``'branch_logits': [E, K, B, C]`` (branches H, M[, T] of every expert);
``'expert_logits'`` is then the branch sum of each expert and ``'logits'`` the mean
over experts of those sums (official RIDE+ResLT prediction), and ``'features'`` the
pooled backbone features before the ResLT branches.

and with ``train=True`` a pair ``(outputs, {'batch_stats': new_batch_stats})``, as Linen
does with ``mutable=['batch_stats']``. Images are NHWC.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ride_jax.losses._checks import check_choice
from ride_jax.models.resnet_cifar import CifarExpert, CifarTrunk
from ride_jax.models.reslt import POOL_ORDERS, CifarResLTExpert, ImageNetResLTExpert
from ride_jax.models.resnet_imagenet import IMAGENET_ARCHS, ImageNetExpert, ImageNetTrunk

Array = jax.Array
Variables = dict[str, Any]

ARCHS = ("resnet32",) + tuple(IMAGENET_ARCHS)
EXPERT_IMPLS = ("vmap", "loop")
HEADS = ("plain", "reslt")


@dataclasses.dataclass(frozen=True)
class RIDEModel:
    """A shared trunk and ``num_experts`` stacked experts. Hashable, holds no arrays.

    Attributes:
      trunk: Linen module ``(images, train) -> h``.
      expert: Linen module ``(h, train) -> (logits [B, C], features [B, D])``, or for
        a multi-branch (ResLT) expert, one with a ``num_branches`` attribute K,
        ``(h, train) -> (branch_logits [K, B, C], features [B, D])``.
      num_experts: E.
      num_classes: C.
      expert_impl: ``'loop'`` (default) or ``'vmap'``: same variables, same numbers;
        the loop is 3-13x faster on CPU for E >= 2 and on par on GPU (BENCHMARKS.md).
      arch: the architecture name, for bookkeeping (compute accounting, conversion).
    """

    trunk: nn.Module
    expert: nn.Module
    num_experts: int
    num_classes: int
    expert_impl: str = "loop"
    arch: str = ""

    def __post_init__(self):
        check_choice("expert_impl", self.expert_impl, EXPERT_IMPLS)
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be a positive integer, got {self.num_experts!r}")

    @property
    def num_branches(self) -> int:
        """K of multi-branch (ResLT) experts; 0 for experts with one classifier output."""
        return int(getattr(self.expert, "num_branches", 0) or 0)

    @property
    def default_image_size(self) -> int:
        """Input side the architecture was designed for: 32 (CIFAR) or 224 (ImageNet)."""
        return 32 if self.arch == "resnet32" else 224

    # ------------------------------------------------------------------ init
    def init(self, rng: Array, images: Array) -> Variables:
        """Initialises all variables. ``images: [B, H, W, 3]`` (only the shape matters)."""
        self._check_images(images)
        trunk_key, expert_key = jax.random.split(rng)
        trunk_vars = self.trunk.init(trunk_key, images, train=False)
        h_shape = jax.eval_shape(
            lambda v, x: self.trunk.apply(v, x, train=False), trunk_vars, images)
        h = jnp.zeros(h_shape.shape, h_shape.dtype)
        keys = jax.random.split(expert_key, self.num_experts)
        expert_vars = jax.vmap(lambda k: self.expert.init(k, h, train=False))(keys)
        return _merge(trunk_vars, expert_vars)

    # ----------------------------------------------------------------- apply
    def apply(self, variables: Variables, images: Array, train: bool = False):
        """Runs the network.

        Args:
          variables: ``{'params': ..., 'batch_stats': ...}`` in the stacked layout.
          images: ``[B, H, W, 3]`` NHWC, already normalised.
          train: batch statistics and running-stat updates (True) or running stats.

        Returns:
          ``outputs`` (eval) or ``(outputs, {'batch_stats': ...})`` (train), where
          ``outputs = {'expert_logits': [E, B, C], 'logits': [B, C], 'features': [E, B, D]}``,
          plus ``'branch_logits': [E, K, B, C]`` for ResLT experts (``expert_logits`` is
          then their sum over K).
        """
        self._check_images(images)
        self.check_variables(variables)
        trunk_vars, expert_vars = _split(variables)
        if train:
            h, trunk_state = self.trunk.apply(trunk_vars, images, train=True,
                                              mutable=["batch_stats"])
        else:
            h = self.trunk.apply(trunk_vars, images, train=False)
            trunk_state = None

        def one_expert(v):
            if train:
                return self.expert.apply(v, h, train=True, mutable=["batch_stats"])
            return self.expert.apply(v, h, train=False), None

        if self.expert_impl == "vmap":
            (logits, features), expert_state = jax.vmap(one_expert)(expert_vars)
        else:
            results = [one_expert(_index(expert_vars, i)) for i in range(self.num_experts)]
            logits = jnp.stack([r[0][0] for r in results])
            features = jnp.stack([r[0][1] for r in results])
            expert_state = (jax.tree.map(lambda *xs: jnp.stack(xs), *[r[1] for r in results])
                            if train else None)

        if self.num_branches:
            branch_logits = logits                      # [E, K, B, C]
            logits = jnp.sum(branch_logits, axis=1)     # [E, B, C]
        outputs = {"expert_logits": logits, "logits": jnp.mean(logits, axis=0),
                   "features": features}
        if self.num_branches:
            outputs["branch_logits"] = branch_logits
        if not train:
            return outputs
        new_stats = {"trunk": trunk_state["batch_stats"],
                     "experts": expert_state["batch_stats"]}
        return outputs, {"batch_stats": new_stats}

    # ------------------------------------------------------------ utilities
    def check_variables(self, variables: Variables) -> None:
        """Raises ValueError if ``variables`` do not have this model's number of experts."""
        try:
            leaf = jax.tree.leaves(variables["params"]["experts"])[0]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(
                "variables must be {'params': {'trunk': ..., 'experts': ...}, "
                "'batch_stats': {...}} as returned by model.init") from e
        if leaf.ndim == 0 or leaf.shape[0] != self.num_experts:
            got = leaf.shape[0] if leaf.ndim else "no expert axis"
            raise ValueError(f"the variables hold {got} experts but the model is configured "
                             f"with num_experts={self.num_experts}")

    @staticmethod
    def _check_images(images) -> None:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(f"images must be a [B, H, W, C] NHWC array, got shape {shape}")
        if shape[-1] not in (1, 3):
            hint = (" (this looks like NCHW: transpose with images.transpose(0, 2, 3, 1))"
                    if shape[1] in (1, 3) else "")
            raise ValueError(f"images must be NHWC with 3 (RGB) or 1 (grey) channels, got "
                             f"shape {tuple(shape)}{hint}")

    def expert_variables(self, variables: Variables, i: int) -> Variables:
        """Variables of expert ``i`` alone (unstacked), for ``self.expert.apply``."""
        return _index(_split(variables)[1], i)


def _split(variables: Variables) -> tuple[Variables, Variables]:
    trunk = {col: tree["trunk"] for col, tree in variables.items()}
    experts = {col: tree["experts"] for col, tree in variables.items()}
    return trunk, experts


def _merge(trunk: Variables, experts: Variables) -> Variables:
    return {col: {"trunk": trunk[col], "experts": experts[col]} for col in trunk}


def _index(tree, i: int):
    return jax.tree.map(lambda a: a[i], tree)


def create_model(arch: str = "resnet32", *, num_classes: int, num_experts: int = 3,
                 reduce_dimension: bool = True, use_norm: bool = True, scale: float = 30.0,
                 expert_impl: str = "loop", dtype: Any = None,
                 layer2_dim: int | None = None, layer3_dim: int | None = None,
                 layer4_dim: int | None = None, head: str = "plain",
                 reslt_branches: int = 3, reslt_eval_gamma: float | None = None,
                 reslt_train_order: str | None = None,
                 reslt_eval_order: str | None = None,
                 fusion_barriers: bool = False, cifar_blocks: int = 5) -> RIDEModel:
    """Builds a RIDE network as the official ``ResNet32Model`` / ``ResNet10Model`` /
    ``ResNet50Model`` / ``ResNeXt50Model`` would.

    Args:
      arch: one of ``'resnet32'`` (CIFAR, 32x32), ``'resnet10'``, ``'resnet50'``,
        ``'resnext50'`` (ImageNet-size, 224x224).
      num_classes: C.
      num_experts: E >= 1. ``resnet32`` with E=1 and ``reduce_dimension=False`` is the
        LDAM-DRW baseline ResNet-32 (16/32/64).
      reduce_dimension: expert widths 24/48 (CIFAR) or planes 192/384 (ImageNet)
        instead of 32/64 or 256/512. True in every RIDE config.
      use_norm: cosine classifier (NormedLinear, logits scaled by ``scale``) or a plain
        linear layer with bias (scale 1).
      scale: s of the cosine classifier (30 in every RIDE config).
      expert_impl: ``'loop'`` (default; fastest measured on CPU, on par on GPU) or
        ``'vmap'`` (grouped convolutions). Same variables, same numbers.
      dtype: computation dtype (None: inferred from inputs and parameters).
      layer2_dim, layer3_dim, layer4_dim: override the expert widths.
      head: ``'plain'`` (default: one classifier per expert, as above) or ``'reslt'``:
        every expert carries a ResLT head (``ride_jax.models.reslt``, official ResLT heads)
        and ``apply`` adds ``'branch_logits' [E, K, B, C]``. With ``num_experts=1`` and
        ``reduce_dimension=False`` this is the official single ResLT network
        (``ResLTResNet32``, ``resnet10_reslt``, ``resnet50_reslt``,
        ``resnext50_32x4d_reslt``); with more experts, the official RIDE+ResLT models.
        The ResLT classifier is a plain ``nn.Linear`` (official): requires
        ``use_norm=False``; ``scale`` is not used.
      reslt_branches: K = 3 (H, M, T) or 2 (H, M: the iNat recipe).
      reslt_eval_gamma: None (default; official for CIFAR): the trained linear
        classifier at test time. A float gamma: official test-time classifier, class
        vectors divided by ``||w_c|| ** gamma`` and no bias (ImageNet-LT/iNat scripts:
        ``ride_jax.models.reslt.RESLT_EVAL_GAMMA``). Training is unaffected.
      reslt_train_order, reslt_eval_order: ImageNet-size archs only; ``'conv_pool'`` or
        ``'pool_conv'``: where the average pool sits relative to the 1x1 conv/BN/ReLU
        block, in training and evaluation. None: official ``'conv_pool'`` (training,
        ``--after_1x1conv``) and ``'pool_conv'`` (evaluation).
      fusion_barriers: ``resnet32`` only. Materialise every ReLU output of the residual
        blocks (``layers.fusion_barrier``): the same function, 1.45-1.86x faster training
        steps on XLA:CPU, which otherwise recomputes BN/ReLU/residual chains inside its
        kernel-gradient transposes. The trainer turns it on for CPU devices
        (``config.cpu_fusion_barriers``).
      cifar_blocks: ``resnet32`` only: BasicBlocks per stage n of the CIFAR ResNet-(6n+2)
        (5: ResNet-32, the official network; 3: ResNet-20; 9: ResNet-56; 1: ResNet-8,
        quick to compile for tests and trials).
    """
    check_choice("arch", arch, ARCHS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_choice("head", head, HEADS)
    if head == "reslt":
        if use_norm:
            raise ValueError("head='reslt' uses a plain linear classifier shared by the "
                             "branches (official ResLT): pass use_norm=False")
        if reslt_branches not in (2, 3):
            raise ValueError(f"reslt_branches must be 2 or 3, got {reslt_branches!r}")
        if reslt_eval_gamma is not None and not float(reslt_eval_gamma) >= 0:
            raise ValueError(f"reslt_eval_gamma must be None or >= 0, got {reslt_eval_gamma!r}")
        for name, value in (("reslt_train_order", reslt_train_order),
                            ("reslt_eval_order", reslt_eval_order)):
            if value is not None:
                check_choice(name, value, POOL_ORDERS)
                if arch == "resnet32":
                    raise ValueError(f"{name} applies to the ImageNet-size ResLT head only; "
                                     "the CIFAR head pools after its branch BNs")
    elif (reslt_branches != 3 or reslt_eval_gamma is not None
          or reslt_train_order is not None or reslt_eval_order is not None):
        raise ValueError("the reslt_* options need head='reslt'")
    if not isinstance(fusion_barriers, bool):
        raise ValueError(f"fusion_barriers must be True or False, got {fusion_barriers!r}")
    if fusion_barriers and arch != "resnet32":
        raise ValueError(f"fusion_barriers=True is implemented for arch 'resnet32' only, "
                         f"not {arch!r}")
    if (isinstance(cifar_blocks, bool) or not isinstance(cifar_blocks, int)
            or cifar_blocks < 1):
        raise ValueError(f"cifar_blocks={cifar_blocks!r} is invalid: expected an integer >= 1")
    if cifar_blocks != 5 and arch != "resnet32":
        raise ValueError(f"cifar_blocks={cifar_blocks} sets the depth of the CIFAR ResNet "
                         f"(arch 'resnet32'); {arch!r} has its own depth: leave it 5")
    if arch == "resnet32":
        if layer4_dim is not None:
            raise ValueError("resnet32 has no layer4: layer4_dim must be None")
        trunk = CifarTrunk(dtype=dtype, fusion_barriers=fusion_barriers, blocks=cifar_blocks)
        if head == "reslt":
            expert = CifarResLTExpert(
                num_classes=num_classes,
                layer2_dim=layer2_dim or (24 if reduce_dimension else 32),
                layer3_dim=layer3_dim or (48 if reduce_dimension else 64),
                num_branches=reslt_branches, eval_gamma=reslt_eval_gamma, dtype=dtype,
                fusion_barriers=fusion_barriers, blocks=cifar_blocks)
            return RIDEModel(trunk=trunk, expert=expert, num_experts=num_experts,
                             num_classes=num_classes, expert_impl=expert_impl, arch=arch)
        expert = CifarExpert(
            num_classes=num_classes,
            layer2_dim=layer2_dim or (24 if reduce_dimension else 32),
            layer3_dim=layer3_dim or (48 if reduce_dimension else 64),
            use_norm=use_norm, scale=scale, dtype=dtype, fusion_barriers=fusion_barriers,
            blocks=cifar_blocks)
    else:
        if layer2_dim is not None:
            raise ValueError(f"{arch} shares layer2 across experts: layer2_dim must be None")
        trunk = ImageNetTrunk(arch=arch, dtype=dtype)
        if head == "reslt":
            expert = ImageNetResLTExpert(
                num_classes=num_classes, arch=arch,
                layer3_dim=layer3_dim or (192 if reduce_dimension else 256),
                layer4_dim=layer4_dim or (384 if reduce_dimension else 512),
                num_branches=reslt_branches, eval_gamma=reslt_eval_gamma,
                train_order=reslt_train_order or "conv_pool",
                eval_order=reslt_eval_order or "pool_conv", dtype=dtype)
            return RIDEModel(trunk=trunk, expert=expert, num_experts=num_experts,
                             num_classes=num_classes, expert_impl=expert_impl, arch=arch)
        expert = ImageNetExpert(
            num_classes=num_classes, arch=arch,
            layer3_dim=layer3_dim or (192 if reduce_dimension else 256),
            layer4_dim=layer4_dim or (384 if reduce_dimension else 512),
            use_norm=use_norm, scale=scale, dtype=dtype)
    return RIDEModel(trunk=trunk, expert=expert, num_experts=num_experts,
                     num_classes=num_classes, expert_impl=expert_impl, arch=arch)


def count_params(variables: Variables) -> int:
    """Number of trainable parameters (the official ``sum(p.numel())``)."""
    return int(sum(x.size for x in jax.tree.leaves(variables["params"])))


def tau_normalize(variables: Variables, tau: float) -> Variables:
    """Post-hoc tau-normalisation of linear classifier heads (Kang et al., ICLR 2020).

    Every class vector ``w_c`` (a column of each expert's ``linear`` kernel ``[E, D, C]``)
    becomes ``w_c / ||w_c||_2 ** tau`` and the bias is dropped (set to 0); everything
    else is unchanged. ``tau = 0`` only drops the bias, ``tau = 1`` gives unit-norm class
    vectors.

    Raises:
      ValueError: a negative ``tau``, or cosine (NormedLinear) heads, whose class
        vectors are normalised already (the model was built with ``use_norm=True``).
    """
    tau = float(tau)
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    head = variables["params"]["experts"].get("linear", {})
    if "bias" not in head:
        raise ValueError("tau-normalisation applies to linear heads (model.use_norm=False); "
                         "this model's cosine (NormedLinear) heads are normalised already")
    kernel = head["kernel"]
    norms = jnp.linalg.norm(kernel, axis=-2, keepdims=True)
    new_head = dict(head, kernel=kernel / norms ** tau, bias=jnp.zeros_like(head["bias"]))
    experts = dict(variables["params"]["experts"], linear=new_head)
    return dict(variables, params=dict(variables["params"], experts=experts))
