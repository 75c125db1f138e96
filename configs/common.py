"""Every config key with its default (the official CIFAR-100-LT RIDE-3 recipe).

Recipe files start from :func:`get_base_config` and change what differs; a key that
is not here cannot be set (``--config.typo=1`` is an error listing the valid keys).
"""

from __future__ import annotations

import ml_collections

from ride_jax import methods
from ride_jax.configlib import STAGES, check_choice, parse_arg


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                       # data order, augmentation and initialisation

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "cifar100_lt"   # a name from ride_jax.data.DATASETS
    c.dataset.args = ml_collections.ConfigDict({"ratio": 100.0})   # builder arguments
    c.dataset.cache = ""             # a prepared .npz (ride_jax.data.prepare) instead

    c.data = ml_collections.ConfigDict()
    c.data.batch_size = 128          # global batch
    c.data.eval_batch_size = 128     # official test.py batch
    c.data.augment = "ride"          # ride (crop, flip, rotation 15) | ldam | none
    c.data.sampler = "shuffle"       # shuffle | balanced
    c.data.remainder = "partial"     # partial (official drop_last=False) | drop
    c.data.workers = 0               # image-file datasets: grain worker processes per
    #                                  process (0: reader threads in the process)
    c.data.fuse_input = False        # in-memory data: the train step gathers and augments
    #                                  its batch itself (one dispatch per step)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet32"
    c.model.num_experts = 3
    c.model.reduce_dimension = True
    c.model.use_norm = True          # NormedLinear (cosine) classifier
    c.model.scale = 30.0
    c.model.expert_impl = "loop"
    c.model.dtype = "float32"        # float32 | bfloat16 (computation dtype)
    # ResLT (official jiequancui/ResLT; docs/parity.md): head 'reslt' gives every expert ResLT branches (one expert
    # and reduce_dimension=False: the official single ResLT network); needs use_norm=False.
    c.model.head = "plain"           # plain | reslt
    c.model.reslt_branches = 3       # 3 (H, M, T) | 2 (H, M: iNat)
    c.model.reslt_eval_gamma = -1.0  # >= 0: test-time classifier w / ||w||^gamma, no bias
    c.model.reslt_train_order = ""   # ImageNet-size: conv_pool | pool_conv ('' = official)
    c.model.reslt_eval_order = ""    # '' = official pool_conv
    c.model.cifar_blocks = 5         # resnet32 only: blocks per stage (5: ResNet-32; 1: ResNet-8)

    c.loss = ml_collections.ConfigDict()
    # A method of ride_jax.methods (ride | ldam_drw | ce | focal | reslt | ride_reslt |
    # logit_adjusted | balanced_softmax | sade) or your own 'package.module:attribute'.
    c.loss.name = "ride"
    c.loss.reweight_epoch = 160      # DRW and class temperatures from epoch + 1
    c.loss.max_margin = 0.5          # LDAM max_m
    c.loss.drw_beta = 0.9999
    c.loss.diversity_factor = -0.45  # RIDE lambda
    c.loss.reweight_factor = 0.05    # RIDE gamma of the class temperatures
    c.loss.base_temperature = 1.0    # RIDE alpha
    c.loss.base_loss_factor = 1.0
    c.loss.temperature_formula = "official"   # official | paper
    c.loss.focal_gamma = 1.0
    # ResLT loss (loss.name 'reslt'): beta * per-branch CE + (1 - beta) * CE of the sum.
    c.loss.reslt_beta = 0.995        # official --beta (README alpha), CIFAR-100 ratio 100
    c.loss.reslt_groups = "index"    # index (CIFAR) | frequency (ImageNet-LT, iNat)
    # index: first class of the medium+tail / tail group; frequency: how many of the
    # rarest training classes form it. reslt_tail = -1: no tail group (2 branches).
    c.loss.reslt_medium_tail = 35
    c.loss.reslt_tail = 70
    c.loss.reslt_fused_ce = "plain"  # plain (CIFAR, iNat) | eps (ImageNet-LT: 1e-7 CE)
    c.loss.label_smoothing = 0.0     # ResLT ImageNet-LT --lsm
    c.loss.logit_adjust_tau = 1.0    # logit_adjusted: CE on logits + tau * log(prior)
    c.loss.sade_lambda = 2.0         # sade: the backward expert's inverse-prior strength

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1
    c.optim.weight_decay = 5e-4
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.warmup_epochs = 5
    c.optim.step1 = 160
    c.optim.step2 = 180
    c.optim.gamma = 0.01
    c.optim.warmup_from = 0.0        # custom warm-up starts at this fraction (ResLT: 1/3)
    c.optim.schedule = "custom"      # custom (official CustomLR) | cosine (per epoch, EA/cRT)
    #                                  | warmup_cosine (ResLT ImageNet-LT/iNat)

    # What the run does (ride_jax.train.STAGES): train (stage 1, from scratch), router
    # (RIDE-EA stage 2), distill (stage 1 with a teacher), crt (classifier retraining),
    # eval (evaluate init_from only). All but train and distill start from init_from.
    c.stage = "train"
    c.init_from = ""                 # a finished run's workdir
    c.init_from_checkpoint = "latest"   # its checkpoint: latest | best | a step number

    c.router = ml_collections.ConfigDict()
    c.router.top_k = 30              # s: top mean-logit values seen (CIFAR-100: 30)
    c.router.hidden = 16
    c.router.pos_weight = 100.0      # w_on of the BCE (all official EA configs)
    c.router.num_buckets = 4         # routed inference: bucket sizes B/n, 2B/n, ..., B
    c.router.force_all = False       # evaluate with every expert (official force_all)

    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""           # workdir of the teacher run (6 experts, official)
    c.distill.temperature = 1.5
    c.distill.factor = 1.0           # kappa (additional_distill_loss_factor)
    c.distill.teacher_bn = "train"   # train (official quirk: batch statistics) | eval
    c.distill.teacher_checkpoint = "latest"   # latest | best | a step number

    c.tau = -1.0                     # >= 0: tau-normalise linear heads before evaluating

    c.eval = ml_collections.ConfigDict()
    # > 0: also report post-hoc logit adjustment, argmax(logits - tau * log(prior))
    # (Menon et al. 2021, section 4), beside the plain numbers.
    c.eval.logit_adjust_tau = 0.0

    c.epochs = 200
    c.max_steps = 0                  # > 0: stop after this many steps (smoke runs)
    c.eval_every_epochs = 1          # official: every epoch
    c.checkpoint_every_epochs = 5
    c.keep_checkpoints = 3
    c.log_every_steps = 20
    c.resume_with_different_config = False
    c.distributed = False            # call jax.distributed.initialize() (multi-host)
    c.cpu_convolutions = "eigen"     # CPU only: eigen (fast kernel gradients) | xla_default
    c.cpu_fusion_barriers = True     # CPU only, resnet32: materialise block activations
                                     # (the same numbers, 1.45-1.86x faster steps on XLA:CPU)
    c.steps_per_call = 1             # train steps scanned in one compiled call (in-memory
                                     # data; 0 = a whole epoch): fewer dispatches on a GPU;
                                     # unrolled on a CPU (K x compile time, no gain there)
    return c


def apply_loss_preset(c: ml_collections.ConfigDict, loss: str, *, ratio: float = 100,
                      reslt_groups: str = "cifar100", experts: int | None = None,
                      family: str = "small_image", backbone: str = "r50") -> None:
    """The method ``loss``'s recipe changes on ``c`` (its file's ``preset``).

    ``loss``: a method name (:data:`ride_jax.methods.NAMES`) or your own
    ``'package.module:attribute'``; ``experts``: the recipe's number of experts (None:
    keep ``c.model.num_experts``); ``ratio`` and ``reslt_groups`` (``cifar100`` |
    ``cifar10``): the ResLT CIFAR table; ``family`` and ``backbone``:
    :class:`ride_jax.methods.Recipe`.
    """
    methods.apply_preset(methods.get(loss), c, methods.Recipe(
        family=family, dataset=c.dataset.name, ratio=ratio, reslt_groups=reslt_groups,
        backbone=backbone,
        experts=c.model.num_experts if experts is None else int(experts)))


def apply_stage(c: ml_collections.ConfigDict, stage: str, *,
                distill_warmup_epochs: int | None = None) -> None:
    """The official recipe changes of each stage (RIDE configs/*_ride_ea.json and *_distill_ride.json;
    cRT is not in the RIDE repository: docs/parity.md).

    * router: RIDE-EA stage 2: balanced sampler, batch 512, SGD lr 0.01 nesterov wd 5e-4,
      cosine over 5 epochs, only the router trains (backbone and BN frozen).
    * distill: a student trained with the teacher's soft targets; the CIFAR recipe
      warms up over 20 epochs (``distill_warmup_epochs``), the others keep 5.
    * crt: classifier re-training (Kang et al. 2020; not in the RIDE repo): fresh heads
      on frozen features, balanced sampler, 10 epochs, cosine from lr 0.05 at batch 128
      (cRT's 0.2 at batch 512, scaled linearly), wd 5e-4.
    * eval: no training (``epochs = 0``); ``tau`` and the router apply.
    """
    c.stage = check_choice("stage", stage, STAGES)
    if stage in ("router", "crt"):   # a frozen network: short, balanced, cosine per epoch
        c.data.sampler = "balanced"
        c.optim.weight_decay = 5e-4
        c.optim.schedule = "cosine"
        c.optim.warmup_epochs = 0
        c.checkpoint_every_epochs = 1
    if stage == "router":
        c.epochs = 5
        c.data.batch_size = 512
        c.optim.lr = 0.01
        c.optim.momentum = 0.9
        c.optim.nesterov = True
    elif stage == "crt":
        c.epochs = 10
        c.optim.lr = 0.05
    elif stage == "eval":
        c.epochs = 0
    elif stage == "distill" and distill_warmup_epochs is not None:
        c.optim.warmup_epochs = distill_warmup_epochs


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Shrink a recipe to a run of about a minute on a 2-core CPU (install check).

    Two epochs, the loss switch and an LR step inside them, an evaluation and a
    checkpoint after each epoch. The recipe file shrinks its dataset itself.
    """
    c.epochs = 2
    c.loss.reweight_epoch = 1
    c.optim.warmup_epochs = 1
    c.optim.step1 = 1
    c.optim.step2 = 2
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 1
    c.log_every_steps = 5


def apply_epoch_budget(c: ml_collections.ConfigDict, epochs: int) -> None:
    """Compress (or stretch) the recipe's schedule to ``epochs`` epochs, keeping its shape.

    Every epoch-valued key scales by ``epochs / c.epochs`` and is rounded (Python's
    ``round``): ``optim.warmup_epochs`` (at least 1 when the recipe warms up),
    ``optim.step1``, ``optim.step2`` and ``loss.reweight_epoch`` (DRW, class temperatures).
    The 200-epoch CIFAR recipe at ``epochs=12``: warm-up 1, DRW and the first LR step
    from epoch 11 (``reweight_epoch = step1 = 10``), the second from epoch 12. Not an
    official recipe: results from it are budget-limited and say so.
    """
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"config argument epochs={epochs} must be >= 1 (0 or absent: the "
                         f"recipe's own {c.epochs})")
    if c.epochs < 1:
        raise ValueError("config argument epochs= has no schedule to scale in stage=eval")
    f = epochs / c.epochs

    def scale(v):
        return min(epochs, int(round(v * f)))

    warmup = c.optim.warmup_epochs
    c.optim.warmup_epochs = max(1, scale(warmup)) if warmup > 0 else 0
    c.optim.step1 = scale(c.optim.step1)
    c.optim.step2 = scale(c.optim.step2)
    c.loss.reweight_epoch = scale(c.loss.reweight_epoch)
    c.epochs = epochs


def parse_small_image_arg(arg, **extra):
    """The ``:args`` of the CIFAR-style recipes: ratio 100|50|10, experts 1..6, loss, smoke,
    epochs (0: the recipe's own; N: :func:`apply_epoch_budget`)."""
    a = parse_arg(arg, ratio=100, experts=3, loss="ride", smoke=False, stage="train",
                  epochs=0, **extra)
    check_choice("ratio", a.ratio, (100, 50, 10))
    check_choice("stage", a.stage, STAGES)
    check_choice("experts", a.experts, range(1, 7))
    if a.epochs and a.smoke:
        raise ValueError("config arguments smoke and epochs= exclude each other: smoke has "
                         "its own two-epoch schedule")
    return a


def small_image_config(a, dataset: str, args: dict, smoke_args: dict, *,
                       router_top_k: int = 30, reslt_groups: str = "cifar10"
                       ) -> ml_collections.ConfigDict:
    """A locked CIFAR-style recipe on ``dataset`` (``a`` from :func:`parse_small_image_arg`).

    ``reslt_groups``: the ResLT groups and beta table of ``loss=reslt`` (``cifar100`` for
    100 classes, ``cifar10`` for the 10-class datasets).
    """
    c = get_base_config()
    c.dataset.name = dataset
    c.dataset.args = args
    apply_loss_preset(c, a.loss, ratio=a.ratio, reslt_groups=reslt_groups,
                      experts=a.experts)
    c.router.top_k = router_top_k
    apply_stage(c, a.stage, distill_warmup_epochs=20)   # the official CIFAR distill
    if a.epochs:
        apply_epoch_budget(c, a.epochs)
    if a.smoke:
        apply_smoke(c)
        c.dataset.args = smoke_args
        if a.stage in ("router", "crt"):
            c.data.batch_size = 64
        elif a.stage == "eval":
            c.epochs = 0
    c.lock()
    return c
