"""The method interface (ride_jax.methods), stages as data (ride_jax.stages), methods from
outside ride_jax (``loss.name='module:attribute'``), the two prior-corrected baselines
and post-hoc logit adjustment at evaluation."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ride_jax import evaluation, methods, stages
from ride_jax.configlib import load
from ride_jax.train import build_dataset, train_and_evaluate

from helpers import ROOT, run_main, synthetic_config

PLUGIN = "tests.plugin_method"       # as main imports it (cwd = the repository root)


def _rows(workdir, kind="train"):
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl")
            .read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


# ------------------------------------------------------------------ your own method

def test_main_trains_a_loss_defined_outside_ride_jax(tmp_path):
    out = run_main(tmp_path / "run", "configs/synthetic_lt.py:smoke,experts=2",
                   [f"--config.loss.name={PLUGIN}:make_loss",
                    "--config.model.cifar_blocks=1"])     # a ResNet-8: the loss is tested
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path / "run")
    assert rows and all({"ce_term", "entropy", "head_prior", "loss"} <= set(r) for r in rows)
    # aux is what the loss computed: loss = ce + 0.1 * entropy (means over a log row of
    # the same steps), and a constant of the training counts (class 0's frequency).
    for r in rows:
        assert r["loss"] == pytest.approx(r["ce_term"] + 0.1 * r["entropy"], rel=1e-5)
    counts = json.loads((tmp_path / "run" / "dataset.json").read_text())["train_counts"]
    assert rows[0]["head_prior"] == pytest.approx(counts[0] / sum(counts), rel=1e-6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"]["name"] == \
        f"{PLUGIN}:make_loss"


@pytest.mark.parametrize("name,message", [
    ("tests.no_such_module:make_loss",
     r"loss.name='tests.no_such_module:make_loss': module 'tests.no_such_module' does not "
     r"import"),
    (f"{PLUGIN}:nothing_here", rf"'{PLUGIN}' has no attribute 'nothing_here'"),
    (f"{PLUGIN}:NOT_CALLABLE", r"'NOT_CALLABLE' \(an int\) is not callable"),
    (f"{PLUGIN}:make_loss_no_aux", r"loss_fn returned an array of shape \(\) and dtype float32; expected "
                                   r"\(loss, aux\)"),
    (f"{PLUGIN}:make_loss_vector_aux", r"aux\['per_class'\] is an array of shape \(10,\)"),
    (f"{PLUGIN}:make_loss_missing_output",
     r"loss_fn asked for outputs\['attention_maps'\]; this network gives \['expert_logits', "
     r"'features', 'logits'\]"),
])
def test_a_bad_method_is_one_line_and_writes_nothing(tmp_path, name, message):
    out = run_main(tmp_path / "run", "configs/synthetic_lt.py:smoke,experts=2",
                   [f"--config.loss.name={name}"])
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), out.stderr[-2000:]
    assert name in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_a_whole_method_object_with_preset_and_evaluation_transform(tmp_path):
    config = synthetic_config("experts=2")
    config.unlock()
    config.loss.name = "plugin_method:METHOD"
    methods.get(config.loss.name).preset(config, methods.Recipe("small_image", "synthetic_lt"))
    config.lock()
    assert config.model.num_experts == 1
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "finished"
    # The transform predicts class 0 for every image: accuracy = class 0's test share.
    test_labels = np.asarray(build_dataset(config).test.labels)
    assert result["last"]["accuracy"] == pytest.approx(np.mean(test_labels == 0))
    assert result["last"]["per_class"][0] == 1.0
    assert all(a == 0.0 for a in result["last"]["per_class"][1:])


def test_a_recipe_takes_a_method_from_outside(tmp_path):
    c = load(ROOT / "configs" / "cifar10_lt.py", f"loss={PLUGIN}:METHOD")
    assert c.loss.name == f"{PLUGIN}:METHOD" or c.loss.name == "ride"
    assert c.model.num_experts == 1 and not c.model.reduce_dimension   # its preset


# ------------------------------------------------------------- registry and stages

def test_the_trainer_names_no_method_and_no_stage():
    """Methods and stages are data: the loop's modules never compare with one by name."""
    # ("train" and "eval" are also BatchNorm modes: distill.teacher_bn.)
    names = "|".join(sorted(set(methods.NAMES) | set(stages.NAMES) - {"train", "eval"}))
    compare = re.compile(r"""(==|!=|\bin)\s*[(\[{]?[^)\]}\n]*["'](%s)["']""" % names)
    assert compare.search('if loss == "ride":') and compare.search("stage in ('train', 'crt')")
    for module in ("train.py", "steps.py", "evaluation.py", "metric_writer.py"):
        source = (ROOT / "ride_jax" / module).read_text()
        found = [m.group(0) for m in compare.finditer(source)]
        assert not found, (module, found)


def test_every_builtin_method_loads_in_every_recipe_family():
    for name in methods.NAMES:
        for recipe, extra in (("cifar100_lt", ""), ("imagenet_lt", ",backbone=r10"),
                              ("inat2018", "")):
            c = load(ROOT / "configs" / f"{recipe}.py", f"loss={name}{extra}")
            expect = "reslt" if name == "ride_reslt" else name
            assert c.loss.name == expect, (name, recipe)
    for name in ("logit_adjusted", "balanced_softmax"):     # the single-model recipe
        for recipe in ("cifar10_lt", "fashion_mnist_lt", "cifar10_jpeg_lt", "imagenet_lt",
                       "places_lt", "inat2018"):
            c = load(ROOT / "configs" / f"{recipe}.py", f"loss={name}")
            assert c.model.num_experts == 1 and not c.model.use_norm
            assert not c.model.reduce_dimension and c.optim.weight_decay == 2e-4


def test_stages_are_data():
    assert set(stages.NAMES) == {"train", "distill", "router", "crt", "eval"}
    assert [s for s in stages.NAMES if stages.STAGES[s].from_init] == ["router", "crt", "eval"]
    assert stages.STAGES["router"].trainable == (("router",),)
    assert not stages.STAGES["crt"].bn_train and stages.STAGES["train"].bn_train
    with pytest.raises(ValueError, match=r"stage 'distill' needs a method with a "
                                         r"distillation loss.*'ce'"):
        stages.make_loss(stages.get("distill"), methods.get("ce"),
                         ml_collections.ConfigDict({"loss": {"name": "ce"}}), np.ones(3))


# --------------------------------------------------- the two prior-corrected baselines

@pytest.mark.parametrize("name", ["logit_adjusted", "balanced_softmax"])
def test_prior_corrected_methods_train(tmp_path, name):
    config = synthetic_config(f"loss={name}", max_steps=3)
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "stopped_at_max_steps" and result["step"] == 3
    losses_seen = [r["loss"] for r in _rows(tmp_path)]
    assert losses_seen and all(np.isfinite(losses_seen))


def test_logit_adjusted_method_is_ce_on_shifted_logits():
    """The method's loss against a NumPy restatement, tau 1 and 2."""
    counts = np.array([50, 20, 5, 1])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 2])
    for tau in (1.0, 2.0):
        config = ml_collections.ConfigDict({"loss": {"logit_adjust_tau": tau}})
        fn = methods.get("logit_adjusted").make_loss(config, counts)
        got, aux = fn({"logits": jnp.asarray(logits)}, jnp.asarray(labels), 1)
        z = logits.astype(np.float64) + np.log((counts / counts.sum()) ** tau + 1e-12)
        want = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(6), labels])
        assert float(got) == pytest.approx(want, rel=1e-5) and aux == {}
    with pytest.raises(ValueError, match=r"balanced_softmax.*classes \[2\] have none"):
        methods.get("balanced_softmax").make_loss(config, np.array([3, 1, 0]))


# ------------------------------------------------------ post-hoc logit adjustment

class _FixedLogits:
    """A 'network' whose logits are the batch's images (one row per example)."""
    num_experts = 1

    def apply(self, variables, images, train=False):
        return {"logits": images, "expert_logits": images[None]}


def test_posthoc_logit_adjustment_hand_computed():
    # counts 9:1 -> log prior [log .9, log .1] = [-0.1054, -2.3026]; tau = 1.
    # Example 1: logits [2, 0] -> adjusted [2.1054, 2.3026]: plain says 0, adjusted 1.
    # Example 2: logits [3, 0] -> adjusted [3.1054, 2.3026]: both say 0.
    # Example 3: logits [0, 1] -> class 1 both ways.
    images = jnp.array([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([1, 0, 1])
    step = evaluation.make_eval_step(_FixedLogits(), class_counts=np.array([9, 1]),
                                     logit_adjust_tau=1.0)
    counts = step({"params": {}, "batch_stats": {}}, {"image": images, "label": labels})
    np.testing.assert_array_equal(counts["correct"], [1, 1])            # plain: 2 of 3
    np.testing.assert_array_equal(counts["posthoc_adjusted"]["correct"], [1, 2])   # all 3
    # tau = 0.1: adjusted logits of example 1 are [2.0105, 0.2303]: class 0 again.
    step = evaluation.make_eval_step(_FixedLogits(), class_counts=np.array([9, 1]),
                                     logit_adjust_tau=0.1)
    counts = step({"params": {}, "batch_stats": {}}, {"image": images, "label": labels})
    np.testing.assert_array_equal(counts["posthoc_adjusted"]["correct"], [1, 1])
    off = evaluation.make_eval_step(_FixedLogits(), class_counts=np.array([9, 1]))
    assert "posthoc_adjusted" not in off({"params": {}, "batch_stats": {}},
                                       {"image": images, "label": labels})


def test_posthoc_numbers_are_reported_beside_the_plain_ones(tmp_path):
    config = synthetic_config("loss=ce", **{"eval.logit_adjust_tau": 1.0})
    result = train_and_evaluate(config, str(tmp_path))
    la = result["last"]["posthoc_adjusted"]
    assert la["tau"] == 1.0 and 0.0 <= la["accuracy"] <= 1.0
    assert {"many", "medium", "few", "per_class"} <= set(la)
    evals = _rows(tmp_path, "eval")
    assert evals[-1]["posthoc_adjusted_accuracy"] == pytest.approx(la["accuracy"])
    assert evals[-1]["accuracy"] == pytest.approx(result["last"]["accuracy"])


def test_a_recipe_argument_names_your_method():
    # loss=module:attribute in a recipe's :args trains that loss (the preset of a
    # make_loss keeps RIDE's network; a Method's own preset applies).
    c = load(str(ROOT / "configs" / "cifar10_lt.py"), f"loss={PLUGIN}:make_loss,experts=2")
    assert c.loss.name == f"{PLUGIN}:make_loss" and c.model.num_experts == 2
    c = load(str(ROOT / "configs" / "imagenet_lt.py"), f"loss={PLUGIN}:METHOD")
    assert c.loss.name == f"{PLUGIN}:METHOD" and c.model.num_experts == 1
