"""The bias/variance study of RIDE's Figure 1a: one recipe trained on resampled
long-tailed training sets, decomposed per shot group (Domingos' 0-1 loss).

    # 10 resamples of a recipe (resample k: dataset argument seed=k and run seed k)
    python -m ride_jax.analysis.study --config=configs/fashion_mnist_lt.py:img_max=500,loss=ce \\
        --workdir=runs/bv_ce --resamples=10
    # one figure and table for several studies
    python -m ride_jax.analysis.study --compare=runs/bv_ce,runs/bv_ldam,runs/bv_ride \\
        --names=CE,LDAM-DRW,RIDE-3 --out=runs/bv_compare

Resample k trains ``config`` with ``dataset.args[<resample_arg>] = k`` (default
``seed``: the official long-tail selection's seed, i.e. another draw of the same number
of images per class from the full training set) and ``config.seed = k``, in
``<workdir>/resample_KK`` (a rerun resumes: nothing finished is trained again). The
test set must be the same for every resample (checked). Then ``study.json`` (table,
per-class values, each resample's accuracy), ``predictions.npz`` and
``bias_variance.png`` are written to the workdir.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from ride_jax.analysis import core, plots


def resample_config(config: ml_collections.ConfigDict, k: int,
                    resample_arg: str = "seed") -> ml_collections.ConfigDict:
    """``config`` for resample ``k``: ``dataset.args[resample_arg] = k``, ``seed = k``."""
    from ride_jax.data.registry import dataset_arguments
    if config.dataset.cache:
        raise ValueError("a bias/variance study resamples the training set from its source: "
                         "dataset.cache must be empty")
    valid = dataset_arguments(config.dataset.name)
    if resample_arg not in valid:
        raise ValueError(f"dataset {config.dataset.name!r} has no argument "
                         f"{resample_arg!r} to resample with; its arguments are "
                         f"{sorted(valid)}")
    c = ml_collections.ConfigDict(config.to_dict())
    c.dataset.args[resample_arg] = int(k)
    c.seed = int(k)
    return c


def _test_fingerprint(dataset) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(dataset.test.images).tobytes())
    h.update(np.ascontiguousarray(dataset.test.labels).tobytes())
    return h.hexdigest()


def run_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              resamples: int, *, resample_arg: str = "seed") -> dict[str, Any]:
    """Train ``resamples`` runs of ``config`` on resampled training sets and decompose.

    Returns:
      ``study.json``'s content: ``{'table': bias_variance_table, 'per_class': {'bias',
      'variance', 'loss', 'train_count'}, 'accuracy': [R], 'resamples': R, ...}``.

    Raises:
      ValueError: fewer than 2 resamples, an argument the dataset lacks, a test set that
        changes with the resample, or a resample run that did not finish.
    """
    from ride_jax.analysis.runs import predict_run
    from ride_jax.train import build_dataset, train_and_evaluate

    if int(resamples) < 2:
        raise ValueError(f"resamples={resamples}: a bias/variance study needs at least 2")
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    predictions, accuracy, labels, counts = [], [], None, None
    # Resample 1's test set is compared with resample 0's before anything trains.
    built = {k: build_dataset(resample_config(config, k, resample_arg)) for k in (0, 1)}
    fingerprint = _test_fingerprint(built[0])

    def check_test_set(k, dataset):
        if _test_fingerprint(dataset) != fingerprint:
            raise ValueError(f"dataset argument {resample_arg}={k} changes the TEST set of "
                             f"{config.dataset.name!r}; the study needs an argument that "
                             "only reselects the training set (synthetic_lt: subset_seed)")

    check_test_set(1, built[1])
    for k in range(int(resamples)):
        c = resample_config(config, k, resample_arg)
        dataset = built.pop(k) if k in built else build_dataset(c)
        check_test_set(k, dataset)
        run_dir = os.path.join(workdir, f"resample_{k:02d}")
        out = train_and_evaluate(c, run_dir, dataset=dataset)
        if out["status"] != "finished":
            raise ValueError(f"resample {k} ({run_dir}) stopped: {out['status']}; run the "
                             "study again to resume it")
        p = predict_run(run_dir, dataset=dataset)
        pred = p["logits"].argmax(-1)
        predictions.append(pred)
        accuracy.append(float(np.mean(pred == p["labels"])))
        labels, counts = p["labels"], np.asarray(p["train_counts"])
    preds = np.stack(predictions)
    np.savez(os.path.join(workdir, "predictions.npz"), predictions=preds, labels=labels,
             train_counts=counts)
    num_classes = len(counts)
    bv = core.bias_variance(preds, labels, num_classes)

    def per_class(key):
        return [None if np.isnan(v) else float(v)
                for v in core.per_class_means(bv[key], labels, num_classes)]

    result = {"config": json.loads(config.to_json()), "resamples": int(resamples),
              "resample_arg": resample_arg, "accuracy": accuracy,
              "table": core.bias_variance_table(preds, labels, counts),
              "per_class": {"train_count": counts.tolist(), "bias": per_class("bias"),
                            "variance": per_class("variance"), "loss": per_class("loss")}}
    with open(os.path.join(workdir, "study.json"), "w") as f:
        json.dump(result, f, indent=1)
    plots.plot_bias_variance({os.path.basename(os.path.abspath(workdir)): result["table"]},
                             os.path.join(workdir, "bias_variance.png"))
    return result


def compare_studies(study_dirs: Sequence[str], out_dir: str, names: Sequence[str] | None = None,
                    *, bootstrap: int = 1000, level: float = 0.9) -> str:
    """One bias/variance figure and a Markdown table for finished studies.

    Each value comes with its ``level`` bootstrap interval over the study's models
    (:func:`ride_jax.analysis.core.bias_variance_interval`, ``bootstrap`` draws; 0: none).

    Returns the Markdown table (also written to ``out_dir/bias_variance.md``, with the
    figure ``out_dir/bias_variance.png``).
    """
    names = list(names) if names else [os.path.basename(os.path.abspath(d)) for d in study_dirs]
    if len(names) != len(study_dirs):
        raise ValueError(f"{len(names)} names for {len(study_dirs)} studies")
    tables, intervals = {}, {}
    for name, d in zip(names, study_dirs):
        path = os.path.join(d, "study.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{d!r} holds no study.json: run the study first")
        with open(path) as f:
            tables[name] = json.load(f)["table"]
        intervals[name] = None
        if bootstrap:
            saved = np.load(os.path.join(d, "predictions.npz"))
            intervals[name] = core.bias_variance_interval(
                saved["predictions"], saved["labels"], saved["train_counts"],
                samples=bootstrap, level=level)
    head = f" [{level:.0%} bootstrap over models]" if bootstrap else ""
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_bias_variance(tables, os.path.join(out_dir, "bias_variance.png"))

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def cell(t, ci, key):
        if ci is None or t[key] is None:
            return fmt(t[key])
        return f"{fmt(t[key])} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]"

    lines = [f"| method | split | bias{head} | variance{head} | 0-1 loss{head} |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, table in tables.items():
        for split in core.SPLITS:
            t, ci = table[split], (intervals[name] or {}).get(split)
            lines.append(f"| {name} | {split} | {cell(t, ci, 'bias')} | "
                         f"{cell(t, ci, 'variance')} | {cell(t, ci, 'loss')} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "bias_variance.md"), "w") as f:
        f.write(text)
    return text


def main(argv) -> int:
    import sys

    from absl import flags
    del argv
    f = flags.FLAGS
    try:
        if f.compare:
            print(compare_studies(f.compare, f.out or ".", f.names, bootstrap=f.bootstrap))
            return 0
        if f.config is None or not f.workdir:
            raise ValueError("give --config and --workdir (a study) or --compare (a figure)")
        result = run_study(f.config, f.workdir, f.resamples, resample_arg=f.resample_arg)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["table"], indent=1))
    print(f"accuracy per resample: {result['accuracy']}; wrote {f.workdir}/study.json, "
          "predictions.npz, bias_variance.png")
    return 0


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "recipe file (configs/X.py:args)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", "", "study folder (resample_KK runs inside)")
    flags.DEFINE_integer("resamples", 10, "number of resampled training sets (>= 2)")
    flags.DEFINE_string("resample_arg", "seed", "dataset argument set to k for resample k")
    flags.DEFINE_list("compare", [], "finished study folders to compare instead")
    flags.DEFINE_list("names", [], "method names for --compare (default: folder names)")
    flags.DEFINE_string("out", "", "output folder of --compare")
    flags.DEFINE_integer("bootstrap", 1000, "--compare: bootstrap draws over the models for "
                         "the 90% intervals (0: no intervals)")


if __name__ == "__main__":
    import sys

    from absl import app
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
