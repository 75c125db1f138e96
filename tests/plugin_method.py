"""Methods defined outside ride_jax, for tests/test_methods.py (``loss.name`` =
``'tests.plugin_method:ATTRIBUTE'``)."""

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax.methods import Method


def make_loss(loss_cfg, class_counts):
    """Cross-entropy of the mean logits plus 0.1 x the mean expert entropy, as a
    researcher would write it; ``aux`` holds both terms."""
    prior = jnp.asarray(np.asarray(class_counts) / np.sum(class_counts), jnp.float32)

    def loss_fn(outputs, labels, epoch):
        logp = jax.nn.log_softmax(outputs["logits"])
        ce = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))
        p = jax.nn.softmax(outputs["expert_logits"])
        entropy = -jnp.mean(jnp.sum(p * jnp.log(p + 1e-9), -1))
        return ce + 0.1 * entropy, {"ce_term": ce, "entropy": entropy,
                                    "head_prior": prior[0] + 0.0 * epoch}
    return loss_fn


def make_loss_no_aux(loss_cfg, class_counts):
    """Returns the loss alone (not the ``(loss, aux)`` pair)."""
    def loss_fn(outputs, labels, epoch):
        return jnp.mean(outputs["logits"])
    return loss_fn


def make_loss_vector_aux(loss_cfg, class_counts):
    """An aux value that is not a scalar."""
    def loss_fn(outputs, labels, epoch):
        return jnp.mean(outputs["logits"]), {"per_class": jnp.mean(outputs["logits"], 0)}
    return loss_fn


def make_loss_missing_output(loss_cfg, class_counts):
    """Asks for an output the network does not give."""
    def loss_fn(outputs, labels, epoch):
        return jnp.mean(outputs["attention_maps"]), {}
    return loss_fn


NOT_CALLABLE = 3


def _predict_class_zero(config, class_counts):
    def transform(outputs):
        logits = outputs["logits"]
        return dict(outputs, logits=jnp.zeros_like(logits).at[:, 0].set(1.0))
    return transform


def _preset(config, recipe):
    config.model.num_experts = 1
    config.model.reduce_dimension = False


# A whole method: its loss, a preset and an evaluation transform that always predicts
# class 0 (so the evaluated accuracy is the share of class 0 in the test set).
METHOD = Method(name="class_zero", make_loss=lambda config, counts: make_loss(config.loss,
                                                                             counts),
                preset=_preset, eval_transform=_predict_class_zero)
