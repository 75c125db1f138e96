"""Analyses of a finished run: its test predictions, per-class figures and a summary.

``predict_run(workdir)`` evaluates the newest checkpoint of a run on its test set with
the run's own settings (test-time classifier, ``tau``, routed inference when the run
has a router) and returns host arrays; ``analyze_run(workdir)`` writes the figures and
``analysis.json`` into ``<workdir>/analysis``. A run on a streamed dataset (ImageNet-LT,
Places-LT, iNat) is loaded from its folder alone with ``load_streamed_predictor`` (no
dataset built, no TensorFlow) and evaluated on image files with ``predict_files``
(the official Resize + CenterCrop on PIL, normalised on the device). The command line is
``python -m ride_jax.analysis run --workdir=DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from ride_jax import evaluation, metrics
from ride_jax.analysis import core, plots

# A confusion matrix is drawn only for this many classes or fewer (readable at 640 px).
CONFUSION_MAX_CLASSES = 30


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A checkpoint of a finished run, ready to evaluate images (see :func:`load_predictor`
    and :func:`load_streamed_predictor`).

    Attributes:
      apply: jitted ``(variables, images [B, H, W, C] normalised) -> (logits [B, C],
        expert_logits [E, B, C], num_experts [B] int32)``: the run's evaluation (the
        method's evaluation transform, routed inference when the run has a router).
      variables: ``{'params', 'batch_stats'}`` (tau-normalised when ``tau >= 0``).
      dataset: the in-memory dataset (None for a streamed run's predictor).
      config: the run's config (JSON dict).
      experts: jitted ``(variables, images) -> expert_logits [E, B, C]`` (every expert,
        no router, no transform).
      num_experts: E.
      routed: the run has a router.
      dtype: the network's input dtype.
      train_counts: ``[C]`` the training images per class.
      image_shape: ``(H, W, C)`` of the network's input.
      mean, std: the dataset's per-channel normalisation (0..1 scale).
    """
    apply: Any
    variables: Any
    dataset: Any
    config: dict
    experts: Any
    num_experts: int
    routed: bool
    dtype: Any
    train_counts: np.ndarray
    image_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# The streamed datasets a predictor can be built for from the run folder alone, and their
# normalisation (official RIDE data loaders; ``ride_jax.data.base``).
def _streamed_normalization() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD
    return {"imagenet_lt": (IMAGENET_MEAN, IMAGENET_STD),
            "places_lt": (IMAGENET_MEAN, IMAGENET_STD),
            "inat2018": (INAT_MEAN, INAT_STD)}


def load_predictor(workdir: str | os.PathLike, *, dataset: Any = None,
                   which: str | int = "latest") -> Predictor:
    """Checkpoint ``which`` (``'latest'``, ``'best'`` or a step) of a run, with the run's own
    evaluation settings, as a :class:`Predictor`.

    Args:
      dataset: the in-memory dataset to use instead of the one the run's config names
        (e.g. when its files moved); must have the run's number of classes.

    Raises:
      ValueError: the dataset is streamed (one line).
    """
    from ride_jax.checkpointing import load_run
    from ride_jax.data.base import ArrayDataset
    from ride_jax.train import build_dataset

    cfg, variables, _ = load_run(os.fspath(workdir), which)
    config = ml_collections.ConfigDict(cfg)
    if dataset is None and config.dataset.name in _streamed_normalization():
        raise ValueError(f"run analysis needs an in-memory dataset; {config.dataset.name!r} "
                         "is streamed (load_streamed_predictor and predict_files read its "
                         "test images from files: python -m ride_jax.analysis shift --run "
                         "RUN --image-root DIR)")
    ds = build_dataset(config) if dataset is None else dataset
    if not isinstance(ds, ArrayDataset):
        raise ValueError(f"run analysis needs an in-memory dataset; {config.dataset.name!r} "
                         "is streamed (prepare a cache with python -m ride_jax.data.prepare "
                         "and pass it as dataset=load_cache(...))")
    return _make_predictor(cfg, variables, ds.num_classes, ds.image_shape,
                           np.asarray(ds.train_counts), tuple(ds.mean), tuple(ds.std),
                           dataset=ds)


def load_streamed_predictor(workdir: str | os.PathLike, *,
                            which: str | int = "latest") -> Predictor:
    """A :class:`Predictor` of a run on a streamed dataset (``imagenet_lt``, ``places_lt``,
    ``inat2018``), built from the run folder alone: no dataset is built, nothing of
    TensorFlow is imported.

    The number of classes, the training counts and the input shape are the run's
    ``dataset.json`` (the trainer writes the dataset's ``describe()`` there); the
    normalisation is the dataset's (ImageNet's for ImageNet-LT and Places-LT, iNat's for
    iNaturalist 2018). ``dataset`` is None: the images come from files
    (:func:`predict_files`).

    Raises:
      FileNotFoundError: no checkpoint, or no ``dataset.json`` (one line).
      ValueError: the run's dataset is not one of the streamed ones (one line).
    """
    from ride_jax.checkpointing import load_run

    cfg, variables, info = load_run(os.fspath(workdir), which)
    name = cfg.get("dataset", {}).get("name")
    norms = _streamed_normalization()
    if name not in norms:
        raise ValueError(f"load_streamed_predictor reads runs on {tuple(norms)}; this run's "
                         f"dataset is {name!r} (use load_predictor)")
    if info is None:
        raise FileNotFoundError(f"{os.fspath(workdir)!r} has no dataset.json (the trainer "
                                "writes it next to config.json): the number of classes and "
                                "training counts of the run are unknown")
    counts = np.asarray(info["train_counts"], np.int64)
    if int(info.get("num_classes", len(counts))) != len(counts):
        raise ValueError(f"dataset.json of {os.fspath(workdir)!r} has num_classes="
                         f"{info.get('num_classes')} but {len(counts)} train_counts")
    mean, std = norms[name]
    return _make_predictor(cfg, variables, len(counts), tuple(int(v) for v in
                                                            info["image_shape"]),
                           counts, tuple(mean), tuple(std), dataset=None)


def _make_predictor(cfg: dict, variables: Any, num_classes: int, image_shape: tuple,
                    counts: np.ndarray, mean: tuple, std: tuple, *, dataset: Any
                    ) -> Predictor:
    """The :class:`Predictor` of a loaded checkpoint (shared by the in-memory and the
    streamed cases)."""
    from ride_jax.models import make_router, routed_apply, tau_normalize
    from ride_jax.networks import DTYPES, model_from_config

    config = ml_collections.ConfigDict(cfg)
    model = model_from_config(cfg["model"], num_classes)
    if config.tau >= 0:
        variables = tau_normalize(variables, config.tau)
    transform = _eval_transform(config, counts)
    router = None
    if "router" in variables["params"]:
        router = make_router(model, tuple(image_shape), top_k=config.router.top_k,
                             hidden=config.router.hidden)

    @jax.jit
    def apply(variables, images):
        out = model.apply(variables, images, train=False)
        logits = transform(out)["logits"]
        used = jax.numpy.full(images.shape[:1], model.num_experts, jax.numpy.int32)
        if router is not None:
            r = routed_apply(model, router, variables, images,
                             num_buckets=config.router.num_buckets,
                             force_all=config.router.force_all)
            logits, used = transform(r)["logits"], r["num_experts"]
        return logits, out["expert_logits"], used

    @jax.jit
    def experts(variables, images):
        return model.apply(variables, images, train=False)["expert_logits"]

    return Predictor(apply=apply, variables=variables, dataset=dataset, config=cfg,
                     experts=experts, num_experts=model.num_experts, routed=router is not None,
                     dtype=DTYPES[config.model.dtype], train_counts=counts,
                     image_shape=tuple(image_shape), mean=mean, std=std)


def _eval_transform(config: ml_collections.ConfigDict, counts: np.ndarray):
    """The method's evaluation transform of the outputs (identity without one, or for a
    plug-in method that does not import here: :func:`ride_jax.methods.find`)."""
    from ride_jax import methods
    method = methods.find(config.loss.name)
    if method is None or method.eval_transform is None:
        return lambda out: out
    return method.eval_transform(config, counts)


def predict_run(workdir: str | os.PathLike, *, dataset: Any = None,
                batch_size: int | None = None, which: str | int = "latest",
                predictor: Predictor | None = None) -> dict[str, Any]:
    """Test-set outputs of a finished run (checkpoint ``which``), on the host.

    Args:
      workdir: the run's workdir.
      dataset: the in-memory dataset to use instead of the one the run's config names
        (e.g. when its files moved); must have the run's number of classes.
      batch_size: evaluation batch (default: the run's ``data.eval_batch_size``).
      which: ``'latest'`` (default), ``'best'`` or a step.
      predictor: :func:`load_predictor`'s output, if already loaded.

    Returns:
      ``{'logits': [N, C] float32 (what the run's evaluation scores), 'expert_logits':
      [E, N, C], 'labels': [N] int, 'num_experts': [N] int (experts used; E without a
      router), 'routed': bool (the run has a router), 'train_counts': [C],
      'class_names': list | None, 'config': dict}``.
    """
    from ride_jax.data.loader import data_mesh
    from ride_jax.data import make_loader

    pr = predictor or load_predictor(workdir, dataset=dataset, which=which)
    config, ds = ml_collections.ConfigDict(pr.config), pr.dataset
    mesh = data_mesh(jax.devices()[:1])
    loader = make_loader(ds, config.data.batch_size,
                         eval_batch_size=batch_size or config.data.eval_batch_size, mesh=mesh,
                         augment="none", dtype=pr.dtype)
    return _collect(pr, loader.eval_batches(), pr.apply, ds.class_names)


def _collect(pr: Predictor, batches: Any, apply: Any, class_names: Any) -> dict[str, Any]:
    """:func:`predict_run`'s dict from padded evaluation ``batches`` (``'image'``,
    ``'label'``, ``'mask'``) run through ``apply(variables, images) -> (logits,
    expert_logits, num_experts)``; padding rows dropped."""
    parts = []
    for batch in batches:
        logits, expert, used = apply(pr.variables, batch["image"])
        keep = np.asarray(batch["mask"])
        parts.append((np.asarray(logits, np.float32)[keep],
                      np.asarray(expert, np.float32)[:, keep],
                      np.asarray(batch["label"])[keep], np.asarray(used)[keep]))
    logits, expert, labels, used = zip(*parts)
    return {"logits": np.concatenate(logits), "expert_logits": np.concatenate(expert, axis=1),
            "labels": np.concatenate(labels).astype(np.int64),
            "num_experts": np.concatenate(used).astype(np.int64), "routed": pr.routed,
            "train_counts": np.asarray(pr.train_counts), "class_names": class_names,
            "config": pr.config}


def file_source(predictor: Predictor, paths: Any, labels: Any) -> Any:
    """The image files ``paths`` (full paths) through the official evaluation transform
    at the run's input size: Resize(``round(size * 256 / 224)``) + CenterCrop(``size``)
    on PIL (:func:`ride_jax.data.grain_pipeline.official_eval_transform`), as a
    :class:`~ride_jax.data.grain_pipeline.FileSource` (uint8, not normalised)."""
    from ride_jax.data import pil_transforms
    from ride_jax.data.grain_pipeline import FileSource, official_eval_transform
    size = int(predictor.image_shape[0])
    return FileSource(paths, labels, transform_eval=official_eval_transform(
        size, pil_transforms.resize_size(size)))


def predict_files(predictor: Predictor, source: Any, *, batch_size: int | None = None,
                  worker_count: int = 0) -> dict[str, Any]:
    """The outputs of a streamed run's :class:`Predictor` on image files, on the host.

    Args:
      predictor: :func:`load_streamed_predictor`'s (or any predictor's) output.
      source: :func:`file_source` (``source[i] -> {'image': uint8, 'label'}``), read in
        order by grain (:func:`ride_jax.data.grain_pipeline.make_eval_iter`: reader
        threads, or ``worker_count`` processes), normalised on the device.
      batch_size: evaluation batch (default: the run's ``data.eval_batch_size``); the last
        batch is padded, so the network compiles once.

    Returns:
      :func:`predict_run`'s keys, in the source's order (``'class_names'`` None).
    """
    from ride_jax.data.augment import normalize
    from ride_jax.data.grain_pipeline import make_eval_iter, reader_options

    pr = predictor
    config = ml_collections.ConfigDict(pr.config)
    batch = int(batch_size or config.data.eval_batch_size)
    mean, std = tuple(pr.mean), tuple(pr.std)

    @jax.jit
    def run(variables, images):
        return pr.apply(variables, normalize(images, mean, std, pr.dtype))

    it = make_eval_iter(source, batch_size=batch, worker_count=worker_count,
                        read_options=reader_options(worker_count))
    try:
        return _collect(pr, it, run, None)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _last_evaluation(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest ``eval/epoch_NNNN.json`` of a run (None without one)."""
    eval_dir = os.path.join(os.fspath(workdir), "eval")
    if not os.path.isdir(eval_dir):
        return None
    epochs = []
    for name in os.listdir(eval_dir):
        stem, ext = os.path.splitext(name)
        if ext == ".json" and stem.startswith("epoch_") and stem[6:].isdigit():
            epochs.append((int(stem[6:]), name))
    if not epochs:
        return None
    with open(os.path.join(eval_dir, max(epochs)[1])) as f:
        return json.load(f)


def analyze_run(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                dataset: Any = None, predictions: dict | None = None) -> dict[str, Any]:
    """Figures and a JSON summary of a finished run, in ``out_dir`` (``<workdir>/analysis``).

    Writes ``accuracy_vs_count.png``, ``hardest_negatives.png``, ``confusion.png`` (for
    at most :data:`CONFUSION_MAX_CLASSES` classes), ``expert_usage.png`` (runs with a
    router), ``reliability.png`` (the reliability diagram of the run's last evaluation,
    from the per-bin calibration counts stored in its ``eval/epoch_NNNN.json``, when
    present) and ``analysis.json`` (per-class accuracy and training counts, accuracy,
    ECE and mean hardest-negative score per shot group, experts used per class).

    ``'ece'`` is the top-label ECE (a fraction; :func:`ride_jax.metrics.group_ece`, 15
    bins) of the softmax of the predictions, overall (``'all'``) and per shot group (None
    for an empty group); ``'last_evaluation'`` (when the run has one) gives the epoch
    and ECE that the trainer's last evaluation reported.

    Args:
      predictions: :func:`predict_run`'s output, if already computed.

    Returns:
      The summary written to ``analysis.json`` plus ``'files'`` (the paths written).
    """
    p = predict_run(workdir, dataset=dataset) if predictions is None else predictions
    out_dir = os.fspath(out_dir or os.path.join(os.fspath(workdir), "analysis"))
    os.makedirs(out_dir, exist_ok=True)
    labels, counts = p["labels"], np.asarray(p["train_counts"])
    num_classes = len(counts)
    preds = p["logits"].argmax(-1)
    acc = core.per_class_accuracy(preds, labels, num_classes)
    hardest = core.hardest_negative_scores(core.softmax(p["logits"]), labels)
    files = [plots.plot_accuracy_vs_count(acc, counts, os.path.join(out_dir,
                                                                    "accuracy_vs_count.png"))]
    files.append(plots.plot_hardest_negative_histograms(
        core.histograms_by_group(hardest, labels, counts),
        os.path.join(out_dir, "hardest_negatives.png")))
    if num_classes <= CONFUSION_MAX_CLASSES:
        files.append(plots.plot_confusion_matrix(
            core.confusion_matrix(preds, labels, num_classes),
            os.path.join(out_dir, "confusion.png"), class_names=p.get("class_names")))
    num_experts = p["expert_logits"].shape[0]
    usage = np.zeros((num_experts, num_classes), np.int64)
    np.add.at(usage, (p["num_experts"] - 1, labels), 1)
    if p["routed"]:
        files.append(plots.plot_expert_usage(usage, counts,
                                             os.path.join(out_dir, "expert_usage.png")))

    ece = metrics.group_ece(core.softmax(p["logits"]).astype(np.float32), labels, counts,
                            num_bins=evaluation.CALIBRATION_BINS)
    last_eval = _last_evaluation(workdir)
    if last_eval is not None and last_eval.get("calibration") is not None and sum(
            last_eval["calibration"]["count"]) > 0:
        files.append(metrics.reliability_diagram(
            {k: np.asarray(v, np.float64) for k, v in last_eval["calibration"].items()},
            os.path.join(out_dir, "reliability.png"),
            title=f"epoch {last_eval.get('epoch')}"))

    def clean(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)

    summary = {
        "workdir": os.path.abspath(os.fspath(workdir)),
        "accuracy": float(np.mean(preds == labels)),
        "groups": {g: clean(v) for g, v in core.group_means(acc, counts).items()},
        "hardest_negative_mean": {
            g: clean(v) for g, v in
            core.group_means(core.per_class_means(hardest, labels, num_classes),
                             counts).items()},
        "per_class": {"train_count": counts.tolist(),
                      "accuracy": [clean(a) for a in acc],
                      "experts_used": usage.T.tolist()},
        "mean_experts": float(np.mean(p["num_experts"])),
        "ece": {g: clean(v) for g, v in ece.items()},
    }
    if last_eval is not None:
        summary["last_evaluation"] = {
            "epoch": last_eval.get("epoch"),
            **{k: last_eval.get(k) for k in ("ece", "ece_many", "ece_medium", "ece_few")}}
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary["files"] = files
    return summary
