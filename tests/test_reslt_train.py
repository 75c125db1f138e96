"""ResLT in the trainer (official ResLT code): the loss the train step optimises, the ResLT
schedules, the config checks, the MACs of a ResLT head and runs through ``main``."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import get_base_config
from ride_jax import flops, optim
from ride_jax.data import load_dataset
from ride_jax.models import create_model
from ride_jax.train import load_run, make_loss_fn, train_and_evaluate

from helpers import run_main, synthetic_config
from test_reslt_loss import np_reslt


def _loss_cfg(**over):
    cfg = get_base_config().loss
    cfg.name = "reslt"
    for k, v in over.items():
        cfg[k] = v
    return cfg


def _case(seed, e, k, b=32, c=10):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(e, k, b, c)).astype(np.float32) * 3
    y = rng.integers(0, c, size=b)
    y[:3] = c - 1          # tail examples in every batch
    return z, y


# ----------------------------------------------------------------------------- loss


def test_loss_fn_is_the_official_loss_summed_over_experts():
    """Index groups (CIFAR): medium+tail = classes >= 3, tail >= 6; 2 experts."""
    z, y = _case(0, e=2, k=3)
    cfg = _loss_cfg(reslt_beta=0.9, reslt_groups="index", reslt_medium_tail=3, reslt_tail=6)
    loss_fn = make_loss_fn(cfg, np.full(10, 50), 30.0)
    got, _ = jax.jit(loss_fn)({"branch_logits": jnp.asarray(z)}, jnp.asarray(y), 1)
    want = sum(np_reslt(z[i], y, [y >= 3, y >= 6], 0.9)[0] for i in range(2))
    assert float(got) == pytest.approx(want, rel=2e-5)
    # The groups matter: other boundaries give another loss.
    other = make_loss_fn(_loss_cfg(reslt_beta=0.9, reslt_medium_tail=1, reslt_tail=2),
                         np.full(10, 50), 30.0)
    assert float(other({"branch_logits": jnp.asarray(z)}, jnp.asarray(y), 1)[0]) != \
        pytest.approx(want, rel=1e-3)


def test_loss_fn_frequency_groups_two_branches_and_eps_fused_ce():
    """Frequency groups (ImageNet-LT/iNat): the 4 rarest training classes; 2 branches
    (iNat) and the 1e-7 fused CE with label smoothing (ImageNet-LT --lsm)."""
    counts = np.array([90, 5, 70, 3, 60, 50, 8, 40, 30, 2])
    rarest4 = {9, 3, 1, 6}                      # counts 2, 3, 5, 8
    z, y = _case(1, e=3, k=2)
    v = np.isin(y, list(rarest4))
    cfg = _loss_cfg(reslt_beta=0.85, reslt_groups="frequency", reslt_medium_tail=4,
                    reslt_tail=-1, reslt_fused_ce="eps", label_smoothing=0.1)
    got, _ = make_loss_fn(cfg, counts, 30.0)({"branch_logits": jnp.asarray(z)},
                                             jnp.asarray(y), 1)
    want = sum(np_reslt(z[i], y, [v], 0.85, delta=0.1, fused="eps")[0] for i in range(3))
    assert float(got) == pytest.approx(want, rel=2e-5)


def test_loss_fn_errors_name_the_config_keys():
    with pytest.raises(ValueError, match="loss.reslt_medium_tail=35"):
        make_loss_fn(_loss_cfg(), np.full(10, 50), 30.0)      # CIFAR-100 groups, 10 classes
    with pytest.raises(ValueError, match="loss.reslt_groups"):
        make_loss_fn(_loss_cfg(reslt_groups="rank"), np.full(10, 50), 30.0)
    with pytest.raises(ValueError, match="loss.reslt_beta"):
        make_loss_fn(_loss_cfg(reslt_beta=1.5, reslt_medium_tail=3, reslt_tail=6),
                     np.full(10, 50), 30.0)
    fn = make_loss_fn(_loss_cfg(reslt_medium_tail=3, reslt_tail=6), np.full(10, 50), 30.0)
    with pytest.raises(ValueError, match="model.head='reslt'"):
        fn({"logits": jnp.zeros((4, 10))}, jnp.zeros(4, jnp.int32), 1)


@pytest.mark.parametrize("over,match", [
    ({"model.head": "plain", "model.use_norm": False}, "model.head=reslt"),
    ({"model.use_norm": True}, "use_norm=False"),
    ({"loss.reslt_tail": -1}, "disagree"),
    ({"model.reslt_branches": 2}, "disagree"),
    ({"model.reslt_train_order": "pool_conv"}, "CIFAR ResLT head"),
])
def test_trainer_refuses_inconsistent_reslt_settings(tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(synthetic_config("loss=reslt", **over), str(tmp_path))


# ------------------------------------------------------------------------ schedules


def test_reslt_cifar_warmup_from_a_third_and_decays_by_ten():
    """ResLT's CIFAR script (cifarTrain_reslt_cifar100.py): lr (1/3 (1 - f) + f),
    f = (e0 + 1) / 5 for e0 < 5, then x0.1 at e0 >= 160 and x0.01 at e0 >= 180 (per epoch)."""
    spe = 7
    sched = jax.jit(optim.custom_lr_schedule(0.1, spe, warmup_epochs=5, step1=160,
                                             step2=180, gamma=0.1, warmup_from=1 / 3))
    for e0 in range(200):
        f = (e0 + 1) / 5
        want = 0.1 * (1 / 3 * (1 - f) + f if e0 < 5 else 1.0)
        want *= 0.01 if e0 >= 180 else 0.1 if e0 >= 160 else 1.0
        for step in (e0 * spe, e0 * spe + spe - 1):
            assert float(sched(step)) == pytest.approx(want, rel=1e-6), e0
    assert float(sched(0)) == pytest.approx(0.04667, abs=1e-5)      # "starts at lr*0.4667"


@pytest.mark.parametrize("lr,epochs,warmup", [(0.1, 180, 5), (0.05, 180, 5), (0.1, 200, 5)])
def test_warmup_cosine_matches_the_official_adjust_learning_rate(lr, epochs, warmup):
    def official(epoch):       # ResLT ImageNetTrain / iNaturalTrain adjust_learning_rate
        if epoch < warmup:
            return lr / warmup * (epoch + 1)
        return 0.5 * lr * (1 + math.cos((epoch - warmup + 1) / (epochs - warmup + 1)
                                        * 3.1415926))
    spe = 3
    sched = jax.jit(optim.warmup_cosine_epoch_schedule(lr, spe, epochs, warmup))
    for e0 in range(epochs):
        assert float(sched(e0 * spe + 2)) == pytest.approx(official(e0), rel=1e-5, abs=1e-8)
    with pytest.raises(ValueError, match="warmup_epochs"):
        optim.warmup_cosine_epoch_schedule(lr, spe, 5, 5)


# ----------------------------------------------------------------------------- MACs


def test_macs_count_the_shared_classifier_once_per_branch():
    plain = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False)
    for k in (2, 3):
        reslt = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False,
                             head="reslt", reslt_branches=k)
        p, r = flops.model_macs(plain), flops.model_macs(reslt)
        d = 48                                          # reduced layer3 width
        assert r.heads == k * d * 10
        # Branch BNs and pooling have no MACs: only the K - 1 extra classifier uses.
        assert r.per_expert - p.per_expert == (k - 1) * d * 10
        assert r.shared == p.shared


# ------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def reslt_run(tmp_path_factory):
    """The official single ResLT network, trained through ``main`` (2 smoke epochs)."""
    d = tmp_path_factory.mktemp("reslt")
    out = run_main(d, "configs/synthetic_lt.py:smoke,loss=reslt")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished at step" in out.stdout
    return d


def test_main_trains_reslt_and_evaluates_with_the_test_time_classifier(reslt_run,
                                                                        tmp_path):
    results = json.loads((pathlib.Path(reslt_run) / "results.json").read_text())
    last = results["last"]
    assert 0 <= last["accuracy"] <= 1 and math.isfinite(last["loss"])
    cfg, variables, _ = load_run(reslt_run)
    assert cfg["model"]["head"] == "reslt" and cfg["loss"]["name"] == "reslt"
    experts = variables["params"]["experts"]
    assert {"bn_h", "bn_m", "bn_t", "linear"} <= set(experts)
    assert experts["linear"]["kernel"].shape == (1, 64, 10)      # one shared classifier
    train_loss = [json.loads(line) for line in
                  (pathlib.Path(reslt_run) / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in train_loss if r["kind"] == "train")

    # Evaluation only, with the official test-time classifier w / ||w||^gamma (no bias):
    # the trainer's numbers equal those of the trained network whose classifier was
    # replaced by that formula by hand.
    gamma = 0.7
    ev = train_and_evaluate(synthetic_config("loss=reslt,stage=eval",
                                             init_from=str(reslt_run),
                                             **{"model.reslt_eval_gamma": gamma}),
                            str(tmp_path / "eval"))["last"]
    c = synthetic_config("loss=reslt")
    data = load_dataset(c.dataset.name, **c.dataset.args.to_dict())
    model = create_model("resnet32", num_classes=10, num_experts=1,
                         reduce_dimension=False, use_norm=False, head="reslt",
                         cifar_blocks=c.model.cifar_blocks)      # the smoke recipe's ResNet-8
    w = np.asarray(experts["linear"]["kernel"], np.float64)
    by_hand = jax.tree.map(np.asarray, variables)
    by_hand["params"]["experts"]["linear"] = {
        "kernel": (w / np.linalg.norm(w, axis=1, keepdims=True) ** gamma).astype(np.float32),
        "bias": np.zeros((1, 10), np.float32)}
    # ToTensor + Normalize, as the trainer's evaluation feeds the network.
    x = (data.test.images.astype(np.float32) / 255.0 - np.asarray(data.mean, np.float32)
         ) / np.asarray(data.std, np.float32)
    pred = np.argmax(np.asarray(model.apply(by_hand, jnp.asarray(x), train=False)["logits"]), -1)
    assert len(set(pred.tolist())) > 1          # not one class for all: the check can fail
    per_class = [float(np.mean(pred[data.test.labels == k] == k)) for k in range(10)]
    assert ev["per_class"] == pytest.approx(per_class, abs=1e-9)
    assert ev["accuracy"] == pytest.approx(float(np.mean(pred == data.test.labels)), abs=1e-9)
    # Without gamma the stage-1 evaluation is reproduced exactly (bias kept).
    plain = train_and_evaluate(synthetic_config("loss=reslt,stage=eval",
                                                init_from=str(reslt_run)),
                               str(tmp_path / "plain"))["last"]
    assert plain["per_class"] == last["per_class"]
    assert ev["loss"] != pytest.approx(plain["loss"], rel=1e-6)


def test_ride_reslt_run_and_user_errors(tmp_path):
    """RIDE experts with ResLT heads train end to end; a mistake is one line, exit 2."""
    out = train_and_evaluate(synthetic_config("loss=ride_reslt,experts=2"),
                             str(tmp_path / "ride"))
    assert out["status"] == "finished" and math.isfinite(out["last"]["loss"])
    _, variables, _ = load_run(tmp_path / "ride")
    assert variables["params"]["experts"]["linear"]["kernel"].shape == (2, 48, 10)
    bad = run_main(tmp_path / "bad", "configs/synthetic_lt.py:smoke,loss=reslt",
                   ["--config.model.use_norm=True"])
    assert bad.returncode == 2 and "use_norm=False" in bad.stderr
    assert "Traceback" not in bad.stderr
    router = run_main(tmp_path / "router", "configs/synthetic_lt.py:smoke,loss=ride_reslt,"
                      "experts=2,stage=router", [f"--config.init_from={tmp_path / 'ride'}"])
    assert router.returncode == 2 and "ResLT" in router.stderr
