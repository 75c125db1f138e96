"""Analyses behind RIDE's motivation, in NumPy, with headless matplotlib plots.

RIDE (Wang et al., ICLR 2021, "Long-tailed Recognition by Routing Diverse
Distribution-Aware Experts") motivates its design with two analyses, both here:

* **Fig. 1a, bias / variance per shot group.** :func:`bias_variance` is the 0-1 loss
  decomposition of Domingos (2000, "A unified bias-variance decomposition") over the
  predictions of M models trained on independently resampled training sets: per
  example the main prediction (majority vote, ties to the smallest class), bias,
  variance, loss and Domingos's multiclass coefficient ``c2`` with
  ``loss = bias + c2 * variance``. :func:`bias_variance_table` reduces it to class
  means for all / many / medium / few classes; :func:`plot_bias_variance` compares
  methods.
* **Fig. 1b, hardest negatives.** :func:`hardest_negative_scores` is each example's
  largest wrong-class probability; :func:`histograms_by_group` bins it per shot group
  and :func:`plot_hardest_negative_histograms` draws it.

Also: :func:`softmax`, :func:`per_class_means`, :func:`group_means`,
:func:`per_class_accuracy`, :func:`confusion_matrix` and the plots
:func:`plot_accuracy_vs_count`, :func:`plot_confusion_matrix`,
:func:`plot_expert_usage` (routed inference: how many experts each class used).

Shot groups come from TRAINING counts (many n > 100, medium 20 <= n <= 100,
few n < 20; :func:`ride_jax.data.long_tail.shot_masks`), and a group value is the mean
of per-class values, ``None`` for a group without classes, as in
:func:`ride_jax.metrics.summarize`. The functions take NumPy arrays (or anything
``np.asarray`` accepts, e.g. ``jax.device_get`` outputs), keep no state and raise
``ValueError`` naming the bad argument. Plots are written as 640 x 480 PNGs.

Of a finished run: :func:`ride_jax.analysis.runs.predict_run` (its test outputs) and
:func:`ride_jax.analysis.runs.analyze_run` (figures and ``analysis.json``), also as
``python -m ride_jax.analysis run --workdir=DIR``.
"""

from ride_jax.analysis.core import (GROUPS, SPLITS, bias_variance, bias_variance_interval,
                                    bias_variance_table,
                                    confusion_matrix, group_means, hardest_negative_scores,
                                    histograms_by_group, per_class_accuracy, per_class_means,
                                    softmax)
from ride_jax.analysis.plots import (DPI, FIGSIZE, plot_accuracy_vs_count, plot_bias_variance,
                                     plot_confusion_matrix, plot_expert_usage,
                                     plot_hardest_negative_histograms)

__all__ = [
    "GROUPS", "SPLITS",
    "bias_variance", "bias_variance_interval", "bias_variance_table", "per_class_means",
    "group_means",
    "softmax", "hardest_negative_scores", "histograms_by_group",
    "per_class_accuracy", "confusion_matrix",
    "DPI", "FIGSIZE",
    "plot_accuracy_vs_count", "plot_hardest_negative_histograms", "plot_bias_variance",
    "plot_confusion_matrix", "plot_expert_usage",
]
