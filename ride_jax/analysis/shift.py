"""A finished run under test class-distribution shift (the test-agnostic protocol).

    python -m ride_jax.analysis shift --run DIR [--which latest|best|STEP] [--out DIR]
                                      [--tta | --no-tta] [--image-root DIR]
    python -m ride_jax.analysis shift --compare DIR [DIR ...] [--names A B ...] [--out DIR]
                                      [--image-root DIR]

The run is evaluated on the test class distributions of SADE (Zhang et al., NeurIPS
2022): forward 50, 25, 10, 5, 2, uniform, backward 2, 5, 10, 25, 50
(:data:`ride_jax.data.long_tail.SHIFTS`; iNaturalist 2018: forward 3, 2, uniform,
backward 2, 3). The test-set logits are computed ONCE, with the run's own evaluation
(tau-normalised heads when ``tau >= 0``, the method's evaluation transform, routed
inference when the run has a router), and each distribution selects its rows:

* in-memory runs: each distribution is a subset of the run's BALANCED test set,
  :func:`ride_jax.data.long_tail.shifted_test_indices` (SADE's CIFAR generation, seed
  0): nested per-class prefixes of one permutation, ``uniform`` the whole test set; the
  logits are :func:`ride_jax.analysis.runs.predict_run`'s;
* ImageNet-LT, Places-LT, iNaturalist 2018 (streamed runs): the distributions are the
  SHIPPED lists of :mod:`ride_jax.data.test_agnostic`, all subsets of the dataset's test
  list (``shifted_test_list(dataset, 'uniform')``), whose images are read from files
  under ``--image-root`` (the folder holding the list's paths, e.g.
  ``val/n01440764/ILSVRC2012_val_00000293.JPEG``; default: the run config's
  ``dataset.args.image_root``, which a Places-LT run read from its folder has). The test
  list is evaluated once through the official Resize(``round(size * 256 / 224)``) +
  CenterCrop(``size``) on PIL (:func:`ride_jax.analysis.runs.predict_files`; the model,
  classes and training counts come from the run folder's checkpoint and
  ``dataset.json``: no dataset is built and TensorFlow is not imported), and each list
  is mapped to rows of it by path (:func:`ride_jax.data.test_agnostic.shifted_test_positions`).

Per distribution: ``accuracy`` (top-1 over the subset's examples), ``many`` /
``medium`` / ``few`` (means of per-class accuracies within the TRAINING-count groups,
as :func:`ride_jax.metrics.summarize`; classes without test examples left out, ``None``
for an empty group), ``num_examples``, ``test_counts`` (per class) and
``prior_corrected``: the same accuracies of the post-hoc prior correction with the
subset's known test prior, ``argmax(logits + log p_test - log p_train)``
(``p_test``: :func:`ride_jax.data.long_tail.shift_prior` of the subset's labels;
``p_train``: the training counts, normalised; a class absent from the subset is never
predicted).

Test-time self-supervised aggregation (SADE §4, :mod:`ride_jax.test_time`): for a run
whose method has one (``loss=sade``), and for any multi-expert run with ``--tta``, the
expert weights are learned per distribution on that subset's unlabelled images (two
random views per image: on the device for in-memory runs, :mod:`ride_jax.data.views`;
SADE's ImageNet-style PIL chain for streamed runs, :mod:`ride_jax.data.pil_views`;
re-initialised per distribution, seed = ``seed``), and the entry's ``tta`` holds the
weights, the epochs run and the accuracies of ``argmax sum_k w_k v_k`` on the clean
images (the expert logits of the single evaluation). ``--no-tta`` skips it. The plain
``accuracy`` stays the uniform mean of the experts (SADE's prediction without it).

``--run`` writes ``shift.json`` and ``shift.png`` (top-1 against the distribution;
solid: plain, dashed: prior-corrected) into ``DIR/analysis`` (or ``--out``).
``--compare`` overlays several runs of one protocol in one ``shift.png`` in ``--out``
(default: the current folder), reusing each run's ``analysis/shift.json`` when it was
computed from the same ``--which`` checkpoint and evaluating the others in memory
(nothing is written into the runs). Bad input (no run in a folder, an unknown
``--which``, an unbalanced test set, a streamed run without an image root, a listed
test image missing under it) is one ``error:`` line, exit status 2, and nothing written.

Supported: runs on in-memory datasets with a balanced test set (the CIFAR-style recipes:
``cifar10_lt``, ``cifar100_lt``, ``synthetic_lt``, Fashion-MNIST-LT, a prepared
``.npz`` cache), and runs on ImageNet-LT, Places-LT and iNaturalist 2018 with their test
images as files (``--image-root``); routed runs too. Not supported: other streamed
datasets (no protocol lists), SADE's online test-time variant.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from ride_jax.analysis import core, plots
from ride_jax.data.long_tail import SHIFTS, parse_shift, shift_prior, shifted_test_indices

SHIFT_FILE = "shift.json"
PLOT_FILE = "shift.png"
# Datasets whose shifted test sets are the shipped lists (ride_jax.data.test_agnostic).
STREAMED = ("imagenet_lt", "places_lt", "inat2018")
SUPPORTED = ("in-memory datasets with a balanced test set (cifar10_lt, cifar100_lt, "
             "synthetic_lt, fashion_mnist_lt, a prepared .npz cache)")
LOGITS = ("the run's evaluation (predict_run, or predict_files for the test images of a "
          "streamed run: tau-normalised heads when tau >= 0, routed inference when the "
          "run has a router)")


def _check_which(which: Any) -> str | int:
    from ride_jax.checkpointing import check_which
    return check_which(which)


def _refuse_streamed(name: Any) -> None:
    """For ``seeds --shift`` (no ``--image-root`` there): refuse the streamed datasets."""
    if name in STREAMED:
        raise ValueError(f"seeds --shift supports {SUPPORTED}; {name!r} reads its test "
                         "images from files: evaluate each seed's run with python -m "
                         "ride_jax.analysis shift --run RUN --image-root DIR")


def _saved_config(workdir: str) -> dict | None:
    """The run's ``config.json`` (None when absent or unreadable: the checkpoint decides)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _dataset_name(config: dict | None) -> Any:
    return ((config or {}).get("dataset") or {}).get("name")


def resolve_image_root(config: dict, image_root: str | os.PathLike | None = None) -> str:
    """The folder holding a streamed run's test images: ``image_root``, else the run
    config's ``dataset.args.image_root`` (Places-LT read from its folder has one).

    Raises:
      ValueError: neither is given (one line, saying to pass ``--image-root``).
      FileNotFoundError: it is not a folder.
    """
    from ride_jax.data import test_agnostic
    name = _dataset_name(config)
    if image_root is None or os.fspath(image_root) == "":
        image_root = (((config.get("dataset") or {}).get("args") or {}).get("image_root")
                      or None)
    if image_root is None:
        example = test_agnostic.shifted_test_list(name, "uniform")[0][0]
        raise ValueError(f"a {name} run is evaluated on the test images read from files: "
                         f"pass --image-root DIR, the folder holding the test list's paths "
                         f"(DIR/{example}, ...)")
    root = os.path.expanduser(os.fspath(image_root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--image-root {root!r} is not a folder")
    return root


def streamed_test_set(dataset: str, image_root: str) -> dict[str, Any]:
    """The test set of a streamed dataset's protocol: its uniform (test) list read under
    ``image_root`` and every distribution as rows of it.

    Returns:
      ``{'paths': [N] full paths, 'labels': [N] int64, 'subsets': {name: [n] rows}}``
      (:func:`ride_jax.data.test_agnostic.shifted_test_positions`; the dataset's own
      distribution names, :func:`ride_jax.data.test_agnostic.shift_names`).

    Raises:
      FileNotFoundError: the first or the last listed file is not under ``image_root``
        (one line naming it; checked before anything else is read).
      ValueError: a shifted list names a path absent from the test list or with another
        label there.
    """
    from ride_jax.data import test_agnostic
    paths, labels = test_agnostic.shifted_test_list(dataset, "uniform")
    for rel in (paths[0], paths[-1]):
        full = os.path.join(image_root, rel)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{full!r} does not exist: --image-root must be the "
                                    f"folder holding {dataset}'s test list paths "
                                    f"({paths[0]}, ...)")
    subsets = test_agnostic.shifted_test_positions(dataset)
    return {"paths": [os.path.join(image_root, p) for p in paths],
            "labels": np.asarray(labels, np.int64), "subsets": subsets}


def shift_logits(workdir: str | os.PathLike, which: str | int = "latest", *,
                 dataset: Any = None, image_root: str | os.PathLike | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The test-set outputs of checkpoint ``which`` of a finished run, computed once.

    In-memory runs: :func:`ride_jax.analysis.runs.predict_run` (the run's own
    evaluation) at ``which`` (``'latest'``, ``'best'`` or a step); ``'labels'`` are in the
    test set's original order (the loader evaluates in order), as
    :func:`~ride_jax.data.long_tail.shifted_test_indices` needs.

    Streamed runs (``imagenet_lt``, ``places_lt``, ``inat2018``): the dataset's uniform
    (test) list read from ``image_root`` (:func:`resolve_image_root`) through the official
    evaluation transform, once (:func:`ride_jax.analysis.runs.predict_files` with
    :func:`~ride_jax.analysis.runs.load_streamed_predictor`: no dataset is built, no
    TensorFlow), plus ``'subsets'`` (``{name: rows}`` of the shipped lists,
    :func:`streamed_test_set`), ``'source'`` (the files, for the test-time views) and
    ``'image_root'``.

    Both add ``'which'`` and ``'predictor'`` (the
    :class:`~ride_jax.analysis.runs.Predictor`, for test-time aggregation).

    Raises:
      ValueError / FileNotFoundError: (one line) a bad ``which``, a folder without a run,
        no image root for a streamed run or a missing listed file (checked before the
        checkpoint is loaded), ``image_root`` for an in-memory run.
    """
    from ride_jax.analysis.runs import load_predictor, predict_run

    which = _check_which(which)
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir!r} is not a folder: give the workdir of a "
                                "finished run")
    config = _saved_config(workdir)
    name = _dataset_name(config)
    if dataset is None and name in STREAMED:
        return _streamed_logits(workdir, which, config, image_root, log)
    if image_root is not None:
        raise ValueError(f"--image-root is for runs on {', '.join(STREAMED)} (their test "
                         f"images are files); this run's dataset is {name!r}")
    predictor = load_predictor(workdir, dataset=dataset, which=which)
    p = predict_run(workdir, predictor=predictor)
    p["which"] = which
    p["predictor"] = predictor
    return p


def _streamed_logits(workdir: str, which: str | int, config: dict, image_root: Any,
                     log: Callable[[str], None] | None) -> dict[str, Any]:
    import time

    from ride_jax.analysis.runs import file_source, load_streamed_predictor, predict_files
    name = _dataset_name(config)
    root = resolve_image_root(config, image_root)
    test = streamed_test_set(name, root)
    predictor = load_streamed_predictor(workdir, which=which)
    num_classes = len(predictor.train_counts)
    if test["labels"].max(initial=0) >= num_classes or test["labels"].min(initial=0) < 0:
        raise ValueError(f"the {name} test list has labels up to "
                         f"{int(test['labels'].max())}; the run has {num_classes} classes")
    source = file_source(predictor, test["paths"], test["labels"])
    start = time.perf_counter()
    p = predict_files(predictor, source)
    if log is not None:
        log(f"evaluated the {len(source)} test images of {name} under {root} in "
            f"{time.perf_counter() - start:.0f} s")
    p.update(which=which, predictor=predictor, source=source, subsets=test["subsets"],
             image_root=root)
    return p


def _accuracies(preds: np.ndarray, labels: np.ndarray, train_counts: np.ndarray
                ) -> dict[str, Any]:
    acc = core.per_class_accuracy(preds, labels, len(train_counts))
    out: dict[str, Any] = {"accuracy": float(np.mean(preds == labels))}
    out.update(core.group_means(acc, train_counts))
    return out


# Rows per chunk of the float64 work on [n, C] logits (iNat: C = 8142).
_CHUNK = 4096


def _chunked_argmax(n: int, scores: Callable[[slice], np.ndarray]) -> np.ndarray:
    return np.concatenate([scores(slice(s, s + _CHUNK)).argmax(-1)
                           for s in range(0, n, _CHUNK)] or [np.zeros(0, np.int64)])


def shift_table(logits: Any, labels: Any, train_counts: Any,
                names: Sequence[str] = SHIFTS, seed: int = 0, *,
                subsets: dict[str, Any] | None = None,
                expert_logits: Any = None,
                aggregation: Callable[[np.ndarray], dict] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Accuracies of test-set ``logits`` on each test distribution (a subset of the rows).

    Args:
      logits: ``[N, C]`` scores of the whole test set, in its original order.
      labels: ``[N]`` its labels (without ``subsets``: every class 0..C-1 the same number
        of times, a balanced test set).
      train_counts: ``[C]`` training images per class (shot groups, ``p_train``).
      names: distributions (:func:`~ride_jax.data.long_tail.parse_shift` names) generated
        with :func:`~ride_jax.data.long_tail.shifted_test_indices` (ignored with
        ``subsets``).
      seed: seed of :func:`~ride_jax.data.long_tail.shifted_test_indices` (0: SADE's).
      subsets: ``{name: [n] row indices}``, the distributions GIVEN (e.g. the shipped
        lists of :func:`ride_jax.data.test_agnostic.shifted_test_positions`), in that
        order; None: generated from ``names``.
      expert_logits: ``[E, N, C]`` the experts' clean logits (with ``aggregation``).
      aggregation: test-time aggregation, ``indices [n] -> fit`` (a
        :func:`ride_jax.test_time.fit_aggregation` result learned on those test images,
        re-initialised per call); None: none.

    Returns:
      ``{name: {'direction', 'ratio', 'num_examples', 'test_counts': [C], 'accuracy',
      'many', 'medium', 'few', 'prior_corrected': {'accuracy', 'many', 'medium', 'few'}
      or None (a class without training images)}}`` in the order of the distributions;
      with ``aggregation``, also ``'tta'``: the fit (``'weights'``, ``'epochs'``, ...)
      and the ``'accuracy'``, ``'many'``, ``'medium'``, ``'few'`` of ``argmax_c sum_k
      w_k expert_logits[k]`` on the subset.
    """
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    labels = np.asarray(labels)
    counts = np.asarray(train_counts)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, C] and labels [N], got shapes {logits.shape} "
                         f"and {labels.shape}")
    num_classes = logits.shape[1]
    if counts.shape != (num_classes,):
        raise ValueError(f"train_counts must have shape ({num_classes},), got {counts.shape}")
    log_train = None
    if np.all(counts > 0):
        log_train = np.log(counts / counts.sum())
    if subsets is None:
        def rows(name, ratio, direction):
            try:
                return shifted_test_indices(labels, ratio, direction, seed,
                                            num_classes=num_classes)
            except ValueError as e:
                raise ValueError(f"shifted test sets need a balanced test set: {e}"
                                 ) from None
        chosen = [(name, None) for name in names]
    else:
        chosen = []
        for name, idx in subsets.items():
            idx = np.asarray(idx, np.int64)
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(labels))):
                raise ValueError(f"subsets[{name!r}] must be [n] row indices in "
                                 f"0..{len(labels) - 1}")
            chosen.append((name, idx))
    preds = logits.argmax(-1)
    if expert_logits is not None:
        expert_logits = np.asarray(expert_logits)
    table = {}
    for name, idx in chosen:
        direction, ratio = parse_shift(name)
        if idx is None:
            idx = rows(name, ratio, direction)
        y = labels[idx]
        entry: dict[str, Any] = {"direction": direction, "ratio": ratio,
                                 "num_examples": int(len(idx)),
                                 "test_counts": np.bincount(y, minlength=num_classes).tolist()}
        entry.update(_accuracies(preds[idx], y, counts))
        entry["prior_corrected"] = None
        if log_train is not None:
            with np.errstate(divide="ignore"):
                log_test = np.log(shift_prior(labels=y, num_classes=num_classes))
            offset = log_test - log_train
            corrected = _chunked_argmax(len(idx), lambda s: (
                logits[idx[s]].astype(np.float64) + offset))
            entry["prior_corrected"] = _accuracies(corrected, y, counts)
        if aggregation is not None:
            fit = dict(aggregation(idx))
            w = np.asarray(fit["weights"], np.float64)
            z = _chunked_argmax(len(idx), lambda s: np.einsum(
                "e,enc->nc", w, expert_logits[:, idx[s]].astype(np.float64)))
            fit.update(_accuracies(z, y, counts))
            entry["tta"] = fit
        table[name] = entry
    return table


def evaluate_shift(workdir: str | os.PathLike, which: str | int = "latest",
                   out_dir: str | os.PathLike | None = None, *, dataset: Any = None,
                   predictions: dict | None = None, seed: int = 0,
                   tta: bool | None = None, log: Callable[[str], None] | None = None,
                   image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate a finished run on its test distributions; write ``shift.json`` and
    ``shift.png`` into ``out_dir`` (default ``<workdir>/analysis``).

    Args:
      which: the checkpoint: ``'latest'``, ``'best'`` or a step.
      dataset: the in-memory dataset to use instead of the one the run's config names.
      predictions: :func:`shift_logits`'s output, if already computed.
      tta: test-time aggregation (:func:`shift_result`): None the method's own, True for
        any multi-expert run, False none.
      image_root: a streamed run's image folder (:func:`resolve_image_root`).

    Returns:
      ``shift.json``'s content (``{'workdir', 'which', 'dataset', 'seed', 'logits',
      'train_counts', 'tta', 'distributions': {name: entry}}``, see :func:`shift_table`;
      streamed runs also ``'image_root'``) plus ``'files'`` (the paths written). Nothing
      is written when it raises.
    """
    result = shift_result(workdir, which, dataset=dataset, predictions=predictions,
                          seed=seed, tta=tta, log=log, image_root=image_root)
    out_dir = os.fspath(out_dir or os.path.join(os.fspath(workdir), "analysis"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, SHIFT_FILE)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    png = plot_shift({os.path.basename(os.path.abspath(os.fspath(workdir))): result},
                     os.path.join(out_dir, PLOT_FILE))
    return dict(result, files=[path, png])


def tta_settings(config: dict, tta: bool | None) -> Any:
    """The test-time aggregation settings of a run (None: no aggregation).

    Args:
      config: the run's config (JSON dict).
      tta: None: the method's own (:attr:`ride_jax.methods.Method.test_time`, SADE's);
        True: the method's own, else :func:`ride_jax.test_time.settings_from_config`;
        False: none.

    Raises:
      ValueError: ``tta=True`` for a run with one expert (one line).
    """
    import ml_collections
    from ride_jax import methods, test_time
    if tta is False:
        return None
    cfg = ml_collections.ConfigDict(config)
    method = methods.find(cfg.loss.name)     # None: a plug-in that does not import here
    own = method and method.test_time
    if tta is None and own is None:
        return None
    if cfg.model.num_experts < 2:
        raise ValueError(f"--tta weighs the experts of a multi-expert run; this run has "
                         f"model.num_experts={cfg.model.num_experts}")
    return (own or test_time.settings_from_config)(cfg)


def _aggregation(p: dict, settings: Any, seed: int, log: Callable[[str], None] | None
                 ) -> Callable[[np.ndarray], dict]:
    """``indices -> fit``: test-time aggregation on those test images of the run
    (``log``: a progress line per fit). In-memory runs: device views of the test images
    (``settings.views``); streamed runs: SADE's PIL views of the files
    (:func:`ride_jax.data.pil_views.view_spec` of the dataset)."""
    import time

    from ride_jax import test_time
    pr = p["predictor"]
    if p.get("source") is not None:
        from ride_jax.data import pil_views
        for_subset = test_time.make_file_view_logits(
            pr.experts, pr.variables, p["source"], pr.mean, pr.std,
            spec=pil_views.view_spec(p["config"]["dataset"]["name"]),
            size=int(pr.image_shape[0]), dtype=pr.dtype)
    else:
        ds = pr.dataset
        for_subset = test_time.make_view_logits(pr.experts, pr.variables, ds.test.images,
                                                ds.mean, ds.std, views=settings.views,
                                                dtype=pr.dtype)

    def fit(indices):
        start = time.perf_counter()
        out = test_time.fit_aggregation(for_subset(indices), len(indices), pr.num_experts,
                                        settings, seed)
        if log is not None:
            log(f"test-time aggregation on {len(indices)} images: weights "
                + " ".join(f"{w:.3f}" for w in out["weights"])
                + f" after {out['epochs']} epoch(s), {time.perf_counter() - start:.0f} s")
        return out
    return fit


def _settings_record(settings: Any, p: dict) -> dict:
    """``shift.json``'s ``'tta'``: the settings, with the PIL view of a streamed run in
    place of the (unused) device view."""
    record = dataclasses.asdict(settings)
    if p.get("source") is not None:
        from ride_jax.data import pil_views
        record["views"] = dict(dataclasses.asdict(
            pil_views.view_spec(p["config"]["dataset"]["name"])), kind="pil")
    return record


def shift_result(workdir: str | os.PathLike, which: str | int = "latest", *,
                 dataset: Any = None, predictions: dict | None = None, seed: int = 0,
                 tta: bool | None = None, log: Callable[[str], None] | None = None,
                 image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``shift.json``'s content for a run, in memory (nothing written).

    ``tta`` (see :func:`tta_settings`): None runs the method's own test-time aggregation
    (SADE), True runs it for any multi-expert run, False never. With it, every
    distribution's entry has ``'tta'`` (:func:`shift_table`) and ``'tta'`` at the top
    holds the settings; otherwise ``'tta'`` is None. The distributions are the eleven of
    :data:`~ride_jax.data.long_tail.SHIFTS` generated from a balanced test set, or a
    streamed dataset's shipped lists (:func:`streamed_test_set`; iNat: five).
    """
    which = _check_which(which)
    if predictions is None:
        early = _saved_config(os.fspath(workdir))
        if dataset is None and early is not None and "loss" in early and "model" in early:
            tta_settings(early, tta)        # a bad --tta before the test set is read
    p = (shift_logits(workdir, which, dataset=dataset, image_root=image_root, log=log)
         if predictions is None else predictions)
    counts = np.asarray(p["train_counts"])
    settings = tta_settings(p["config"], tta)
    extra = {}
    if settings is not None:
        if "predictor" not in p:
            p = shift_logits(workdir, which, dataset=dataset, image_root=image_root, log=log)
        extra = {"expert_logits": p["expert_logits"],
                 "aggregation": _aggregation(p, settings, seed, log)}
    result = {"workdir": os.path.abspath(os.fspath(workdir)), "which": which,
              "dataset": p["config"]["dataset"]["name"], "seed": int(seed), "logits": LOGITS,
              "train_counts": counts.tolist(),
              "tta": None if settings is None else _settings_record(settings, p),
              "distributions": shift_table(p["logits"], p["labels"], counts, SHIFTS, seed,
                                           subsets=p.get("subsets"), **extra)}
    if p.get("image_root") is not None:
        result["image_root"] = p["image_root"]
    return result


def _names(results: dict[str, dict[str, Any]]) -> list[str]:
    """The distributions the results share, in the first one's order (every result must
    hold the same ones)."""
    names = None
    for run, result in results.items():
        mine = list(result["distributions"])
        if names is None:
            names = mine
        elif set(mine) != set(names):
            raise ValueError(f"the runs have different test distributions ({run!r}: "
                             f"{', '.join(mine)}; others: {', '.join(names)}): compare "
                             "runs of one protocol")
    return names or []


def plot_shift(results: dict[str, dict[str, Any]], path: Any) -> str:
    """Top-1 accuracy against the test distribution (forward ... uniform ... backward, the
    names the results hold), one colour per run: solid plain, dashed prior-corrected,
    dotted after test-time aggregation (when the result has it).

    Args:
      results: ``{run_name: shift.json content}`` (the same distributions each).
      path: PNG to write (640 x 480).
    """
    if not results:
        raise ValueError("results must be a non-empty dict {run_name: shift result}")
    names = _names(results)
    fig = plots._new_figure()
    ax = fig.add_subplot()
    x = np.arange(len(names))
    for j, (name, result) in enumerate(results.items()):
        d = result["distributions"]
        ax.plot(x, [d[s]["accuracy"] for s in names], "o-", color=f"C{j}", label=str(name))
        pc = [np.nan if d[s]["prior_corrected"] is None else d[s]["prior_corrected"]["accuracy"]
              for s in names]
        if not np.all(np.isnan(pc)):
            ax.plot(x, pc, "s--", color=f"C{j}", alpha=0.8,
                    label=f"{name} (prior-corrected)")
        if all("tta" in d[s] for s in names):
            ax.plot(x, [d[s]["tta"]["accuracy"] for s in names], "^:", color=f"C{j}",
                    label=f"{name} (test-time aggregation)")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_xlabel("test class distribution")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return plots._save(fig, path)


def _expected_names(dataset: Any) -> tuple[str, ...]:
    """The distributions of a run's protocol: a streamed dataset's shipped lists, else the
    eleven generated ones."""
    if dataset in STREAMED:
        from ride_jax.data import test_agnostic
        return tuple(test_agnostic.shift_names(dataset))
    return SHIFTS


def _saved_result(run_dir: str, which: str | int, tta: bool | None = None) -> dict | None:
    """A run's ``analysis/shift.json`` if it answers ``which`` (and has the test-time
    aggregation when ``tta`` is True); None: evaluate again."""
    path = os.path.join(run_dir, "analysis", SHIFT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        want = _expected_names(saved.get("dataset"))
        ok = set(saved["distributions"]) == set(want)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path!r} is not a shift.json (delete it to evaluate the run "
                         "again)") from None
    if not ok:
        raise ValueError(f"{path!r} does not hold the {len(want)} distributions {want}")
    if saved.get("which") != which or (tta is True and saved.get("tta") is None):
        return None
    return saved


def compare_shift(run_dirs: Sequence[str], out_dir: str | os.PathLike = ".",
                  names: Sequence[str] | None = None, which: str | int = "latest",
                  tta: bool | None = None, log: Callable[[str], None] | None = None,
                  image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """One ``shift.png`` in ``out_dir`` overlaying several runs (of one protocol: the
    same test distributions).

    Each run's ``analysis/shift.json`` is reused when it was computed at the same
    ``which`` (and holds the test-time aggregation when ``tta`` is True); the others are
    evaluated in memory (nothing is written into the runs; a streamed run reads its test
    images under ``image_root``, default its config's).

    Returns:
      ``{'results': {name: shift result}, 'reused': [names], 'files': [png]}``.
    """
    which = _check_which(which)
    run_dirs = [os.fspath(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("--compare needs at least one run folder")
    if names:
        names = list(names)
        if len(names) != len(run_dirs):
            raise ValueError(f"{len(names)} names for {len(run_dirs)} runs")
    else:
        names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
        if len(set(names)) < len(names):
            names = list(run_dirs)
    if len(set(names)) < len(names):
        raise ValueError(f"the run names {names} repeat: give distinct --names")
    saved = {name: _saved_result(d, which, tta) for name, d in zip(names, run_dirs)}
    protocols = {}
    for name, d in zip(names, run_dirs):        # one protocol, before evaluating any
        dataset = (saved[name]["dataset"] if saved[name] is not None
                   else _dataset_name(_saved_config(d)))
        protocols.setdefault(_expected_names(dataset), []).append(name)
    if len(protocols) > 1:
        raise ValueError("the runs have different test distributions (" + "; ".join(
            f"{', '.join(runs)}: {len(n)}" for n, runs in protocols.items())
            + "): compare runs of one protocol")
    results, reused = {}, []
    for name, d in zip(names, run_dirs):
        if saved[name] is not None:
            reused.append(name)
        results[name] = (saved[name] if saved[name] is not None
                         else shift_result(d, which, tta=tta, log=log, image_root=image_root))
    _names(results)                       # one protocol, before anything is written
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    png = plot_shift(results, os.path.join(os.fspath(out_dir), PLOT_FILE))
    return {"results": results, "reused": reused, "files": [png]}


def _fmt(v: Any) -> str:
    return "    -" if v is None else f"{v:.3f}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A text table: per run and distribution, top-1, prior-corrected top-1, groups; with
    test-time aggregation also its top-1 and the learned expert weights."""
    lines = []
    for name, r in results.items():
        dists = r["distributions"]
        tta = bool(dists) and all("tta" in e for e in dists.values())
        lines.append(f"{name} ({r['which']} checkpoint)")
        lines.append(f"  {'distribution':<12} {'n':>6} {'top1':>6} {'corr.':>6} "
                     f"{'many':>6} {'medium':>6} {'few':>6}"
                     + (f" {'tta':>6}  expert weights" if tta else ""))
        for s, e in dists.items():
            pc = e["prior_corrected"] or {}
            line = (f"  {s:<12} {e['num_examples']:>6} {_fmt(e['accuracy']):>6} "
                    f"{_fmt(pc.get('accuracy')):>6} {_fmt(e['many']):>6} "
                    f"{_fmt(e['medium']):>6} {_fmt(e['few']):>6}")
            if tta:
                t = e["tta"]
                line += (f" {_fmt(t['accuracy']):>6}  "
                         + " ".join(f"{w:.2f}" for w in t["weights"]))
            lines.append(line)
    return "\n".join(lines)


def command(args: Any) -> int:
    """Run the ``shift`` subcommand; ``error:`` line and 2 on bad input."""
    import sys

    def log(line):
        print(line, file=sys.stderr, flush=True)
    image_root = getattr(args, "image_root", None)
    try:
        if args.compare:
            out = compare_shift(args.compare, args.out or ".", args.names, args.which,
                                tta=args.tta, log=log, image_root=image_root)
            results, files = out["results"], out["files"]
        else:
            if args.names:
                raise ValueError("--names goes with --compare")
            r = evaluate_shift(args.run, args.which, args.out, tta=args.tta, log=log,
                               image_root=image_root)
            files = r.pop("files")
            results = {os.path.basename(os.path.abspath(args.run)): r}
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}",
              file=sys.stderr)
        return 2
    print(format_table(results))
    print("wrote " + ", ".join(files))
    return 0
