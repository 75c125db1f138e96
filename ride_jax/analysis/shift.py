"""A finished run under test class-distribution shift (the test-agnostic protocol).

    python -m ride_jax.analysis shift --run DIR [--which latest|best|STEP] [--out DIR]
                                      [--tta | --no-tta]
    python -m ride_jax.analysis shift --compare DIR [DIR ...] [--names A B ...] [--out DIR]

The run is evaluated on the eleven test class distributions of SADE (Zhang et al.,
NeurIPS 2022): forward 50, 25, 10, 5, 2, uniform, backward 2, 5, 10, 25, 50
(:data:`ride_jax.data.long_tail.SHIFTS`). Each is a subset of the run's BALANCED test
set, :func:`ride_jax.data.long_tail.shifted_test_indices` (SADE's CIFAR generation,
seed 0): the subsets are nested per-class prefixes of one permutation, ``uniform`` is the
whole test set. The test-set logits are computed ONCE, with the run's own evaluation
(:func:`ride_jax.analysis.runs.predict_run`: tau-normalised heads when ``tau >= 0``,
routed inference when the run has a router), and each distribution selects its rows.

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
random views per image, :mod:`ride_jax.data.views`; re-initialised per distribution,
seed = ``seed``), and the entry's ``tta`` holds the weights, the epochs run and the
accuracies of ``argmax sum_k w_k v_k`` on the clean images. ``--no-tta`` skips it. The
plain ``accuracy`` stays the uniform mean of the experts (SADE's prediction without it).

``--run`` writes ``shift.json`` and ``shift.png`` (top-1 against the distribution;
solid: plain, dashed: prior-corrected) into ``DIR/analysis`` (or ``--out``).
``--compare`` overlays several runs in one ``shift.png`` in ``--out`` (default: the
current folder), reusing each run's ``analysis/shift.json`` when it was computed from the
same ``--which`` checkpoint and evaluating the others in memory (nothing is written into
the runs). Bad input (no run in a folder, an unknown ``--which``, a streamed dataset, an
unbalanced test set) is one ``error:`` line, exit status 2, and nothing written.

Supported: runs on in-memory datasets with a balanced test set (the CIFAR-style recipes:
``cifar10_lt``, ``cifar100_lt``, ``synthetic_lt``, Fashion-MNIST-LT, a prepared
``.npz`` cache). ImageNet-LT, Places-LT and iNaturalist 2018 (their shifted sets are the
shipped lists of :mod:`ride_jax.data.test_agnostic`) are refused.
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
LOGITS = ("the run's evaluation (predict_run: tau-normalised heads when tau >= 0, routed "
          "inference when the run has a router)")


def _check_which(which: Any) -> str | int:
    from ride_jax.checkpointing import check_which
    return check_which(which)


def _refuse_streamed(name: Any) -> None:
    if name in STREAMED:
        raise ValueError(f"shift supports {SUPPORTED}; {name!r} is a streamed dataset whose "
                         "shifted test sets are the shipped lists of "
                         "ride_jax.data.test_agnostic, not supported here")


def shift_logits(workdir: str | os.PathLike, which: str | int = "latest", *,
                 dataset: Any = None) -> dict[str, Any]:
    """The test-set outputs of checkpoint ``which`` of a finished run, computed once.

    :func:`ride_jax.analysis.runs.predict_run` (the run's own evaluation) at ``which``
    (``'latest'``, ``'best'`` or a step), plus ``'which'`` and ``'predictor'`` (its
    :class:`~ride_jax.analysis.runs.Predictor`, for test-time aggregation). ``'labels'`` are in the test
    set's original order (the loader evaluates in order), as
    :func:`~ride_jax.data.long_tail.shifted_test_indices` needs.

    Raises:
      ValueError / FileNotFoundError: (one line) a bad ``which``, a folder without a run,
        a streamed dataset.
    """
    from ride_jax.analysis.runs import load_predictor, predict_run

    which = _check_which(which)
    workdir = os.fspath(workdir)
    cfg_path = os.path.join(workdir, "config.json")
    if dataset is None and os.path.exists(cfg_path):   # refuse before loading anything
        with open(cfg_path) as f:
            _refuse_streamed(json.load(f).get("dataset", {}).get("name"))
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir!r} is not a folder: give the workdir of a "
                                "finished run")
    predictor = load_predictor(workdir, dataset=dataset, which=which)
    _refuse_streamed(predictor.config["dataset"]["name"])
    p = predict_run(workdir, predictor=predictor)
    p["which"] = which
    p["predictor"] = predictor
    return p


def _accuracies(preds: np.ndarray, labels: np.ndarray, train_counts: np.ndarray
                ) -> dict[str, Any]:
    acc = core.per_class_accuracy(preds, labels, len(train_counts))
    out: dict[str, Any] = {"accuracy": float(np.mean(preds == labels))}
    out.update(core.group_means(acc, train_counts))
    return out


def shift_table(logits: Any, labels: Any, train_counts: Any,
                names: Sequence[str] = SHIFTS, seed: int = 0, *,
                expert_logits: Any = None,
                aggregation: Callable[[np.ndarray], dict] | None = None
                ) -> dict[str, dict[str, Any]]:
    """Accuracies of test-set ``logits`` on each shifted subset of the balanced test set.

    Args:
      logits: ``[N, C]`` scores of the whole balanced test set, in its original order.
      labels: ``[N]`` its labels (every class 0..C-1 the same number of times).
      train_counts: ``[C]`` training images per class (shot groups, ``p_train``).
      names: distributions (:func:`~ride_jax.data.long_tail.parse_shift` names).
      seed: seed of :func:`~ride_jax.data.long_tail.shifted_test_indices` (0: SADE's).
      expert_logits: ``[E, N, C]`` the experts' clean logits (with ``aggregation``).
      aggregation: test-time aggregation, ``indices [n] -> fit`` (a
        :func:`ride_jax.test_time.fit_aggregation` result learned on those test images,
        re-initialised per call); None: none.

    Returns:
      ``{name: {'direction', 'ratio', 'num_examples', 'test_counts': [C], 'accuracy',
      'many', 'medium', 'few', 'prior_corrected': {'accuracy', 'many', 'medium', 'few'}
      or None (a class without training images)}}`` in the order of ``names``; with
      ``aggregation``, also ``'tta'``: the fit (``'weights'``, ``'epochs'``, ...) and the
      ``'accuracy'``, ``'many'``, ``'medium'``, ``'few'`` of ``argmax_c sum_k w_k
      expert_logits[k]`` on the subset.
    """
    logits = np.asarray(logits, np.float64)
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
    preds = logits.argmax(-1)
    table = {}
    for name in names:
        direction, ratio = parse_shift(name)
        try:
            idx = shifted_test_indices(labels, ratio, direction, seed,
                                       num_classes=num_classes)
        except ValueError as e:
            raise ValueError(f"shifted test sets need a balanced test set: {e}") from None
        y = labels[idx]
        entry: dict[str, Any] = {"direction": direction, "ratio": ratio,
                                 "num_examples": int(len(idx)),
                                 "test_counts": np.bincount(y, minlength=num_classes).tolist()}
        entry.update(_accuracies(preds[idx], y, counts))
        entry["prior_corrected"] = None
        if log_train is not None:
            with np.errstate(divide="ignore"):
                log_test = np.log(shift_prior(labels=y, num_classes=num_classes))
            corrected = (logits[idx] + log_test - log_train).argmax(-1)
            entry["prior_corrected"] = _accuracies(corrected, y, counts)
        if aggregation is not None:
            fit = dict(aggregation(idx))
            w = np.asarray(fit["weights"], np.float64)
            z = np.einsum("e,enc->nc", w, np.asarray(expert_logits, np.float64)[:, idx])
            fit.update(_accuracies(z.argmax(-1), y, counts))
            entry["tta"] = fit
        table[name] = entry
    return table


def evaluate_shift(workdir: str | os.PathLike, which: str | int = "latest",
                   out_dir: str | os.PathLike | None = None, *, dataset: Any = None,
                   predictions: dict | None = None, seed: int = 0,
                   tta: bool | None = None, log: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Evaluate a finished run on the eleven distributions; write ``shift.json`` and
    ``shift.png`` into ``out_dir`` (default ``<workdir>/analysis``).

    Args:
      which: the checkpoint: ``'latest'``, ``'best'`` or a step.
      dataset: the in-memory dataset to use instead of the one the run's config names.
      predictions: :func:`shift_logits`'s output, if already computed.
      tta: test-time aggregation (:func:`shift_result`): None the method's own, True for
        any multi-expert run, False none.

    Returns:
      ``shift.json``'s content (``{'workdir', 'which', 'dataset', 'seed', 'logits',
      'train_counts', 'tta', 'distributions': {name: entry}}``, see :func:`shift_table`) plus
      ``'files'`` (the paths written). Nothing is written when it raises.
    """
    result = shift_result(workdir, which, dataset=dataset, predictions=predictions,
                          seed=seed, tta=tta, log=log)
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
    (``log``: a progress line per fit)."""
    import time

    from ride_jax import test_time
    pr = p["predictor"]
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


def shift_result(workdir: str | os.PathLike, which: str | int = "latest", *,
                 dataset: Any = None, predictions: dict | None = None, seed: int = 0,
                 tta: bool | None = None, log: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """``shift.json``'s content for a run, in memory (nothing written).

    ``tta`` (see :func:`tta_settings`): None runs the method's own test-time aggregation
    (SADE), True runs it for any multi-expert run, False never. With it, every
    distribution's entry has ``'tta'`` (:func:`shift_table`) and ``'tta'`` at the top
    holds the settings; otherwise ``'tta'`` is None.
    """
    which = _check_which(which)
    p = shift_logits(workdir, which, dataset=dataset) if predictions is None else predictions
    counts = np.asarray(p["train_counts"])
    settings = tta_settings(p["config"], tta)
    extra = {}
    if settings is not None:
        if "predictor" not in p:
            p = shift_logits(workdir, which, dataset=dataset)
        extra = {"expert_logits": p["expert_logits"],
                 "aggregation": _aggregation(p, settings, seed, log)}
    return {"workdir": os.path.abspath(os.fspath(workdir)), "which": which,
            "dataset": p["config"]["dataset"]["name"], "seed": int(seed), "logits": LOGITS,
            "train_counts": counts.tolist(),
            "tta": None if settings is None else dataclasses.asdict(settings),
            "distributions": shift_table(p["logits"], p["labels"], counts, SHIFTS, seed,
                                         **extra)}


def plot_shift(results: dict[str, dict[str, Any]], path: Any) -> str:
    """Top-1 accuracy against the test distribution (forward 50 ... backward 50), one
    colour per run: solid plain, dashed prior-corrected, dotted after test-time
    aggregation (when the result has it).

    Args:
      results: ``{run_name: shift.json content}``.
      path: PNG to write (640 x 480).
    """
    if not results:
        raise ValueError("results must be a non-empty dict {run_name: shift result}")
    fig = plots._new_figure()
    ax = fig.add_subplot()
    x = np.arange(len(SHIFTS))
    for j, (name, result) in enumerate(results.items()):
        d = result["distributions"]
        ax.plot(x, [d[s]["accuracy"] for s in SHIFTS], "o-", color=f"C{j}", label=str(name))
        pc = [np.nan if d[s]["prior_corrected"] is None else d[s]["prior_corrected"]["accuracy"]
              for s in SHIFTS]
        if not np.all(np.isnan(pc)):
            ax.plot(x, pc, "s--", color=f"C{j}", alpha=0.8,
                    label=f"{name} (prior-corrected)")
        if all("tta" in d[s] for s in SHIFTS):
            ax.plot(x, [d[s]["tta"]["accuracy"] for s in SHIFTS], "^:", color=f"C{j}",
                    label=f"{name} (test-time aggregation)")
    ax.set_xticks(x, SHIFTS, rotation=45, ha="right")
    ax.set_xlabel("test class distribution")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return plots._save(fig, path)


def _saved_result(run_dir: str, which: str | int, tta: bool | None = None) -> dict | None:
    """A run's ``analysis/shift.json`` if it answers ``which`` (and has the test-time
    aggregation when ``tta`` is True); None: evaluate again."""
    path = os.path.join(run_dir, "analysis", SHIFT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        ok = set(saved["distributions"]) == set(SHIFTS)
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path!r} is not a shift.json (delete it to evaluate the run "
                         "again)") from None
    if not ok:
        raise ValueError(f"{path!r} does not hold the eleven distributions {SHIFTS}")
    if saved.get("which") != which or (tta is True and saved.get("tta") is None):
        return None
    return saved


def compare_shift(run_dirs: Sequence[str], out_dir: str | os.PathLike = ".",
                  names: Sequence[str] | None = None, which: str | int = "latest",
                  tta: bool | None = None, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """One ``shift.png`` in ``out_dir`` overlaying several runs.

    Each run's ``analysis/shift.json`` is reused when it was computed at the same
    ``which`` (and holds the test-time aggregation when ``tta`` is True); the others are
    evaluated in memory (nothing is written into the runs).

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
    results, reused = {}, []
    for name, d in zip(names, run_dirs):
        saved = _saved_result(d, which, tta)
        if saved is not None:
            reused.append(name)
        results[name] = (saved if saved is not None
                         else shift_result(d, which, tta=tta, log=log))
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
        tta = all("tta" in r["distributions"][s] for s in SHIFTS)
        lines.append(f"{name} ({r['which']} checkpoint)")
        lines.append(f"  {'distribution':<12} {'n':>6} {'top1':>6} {'corr.':>6} "
                     f"{'many':>6} {'medium':>6} {'few':>6}"
                     + (f" {'tta':>6}  expert weights" if tta else ""))
        for s in SHIFTS:
            e = r["distributions"][s]
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
    try:
        if args.compare:
            out = compare_shift(args.compare, args.out or ".", args.names, args.which,
                                tta=args.tta, log=log)
            results, files = out["results"], out["files"]
        else:
            if args.names:
                raise ValueError("--names goes with --compare")
            r = evaluate_shift(args.run, args.which, args.out, tta=args.tta, log=log)
            files = r.pop("files")
            results = {os.path.basename(os.path.abspath(args.run)): r}
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}",
              file=sys.stderr)
        return 2
    print(format_table(results))
    print("wrote " + ", ".join(files))
    return 0
