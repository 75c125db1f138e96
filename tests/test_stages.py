"""Stages after stage 1, end to end on synthetic data: RIDE-EA router (stage 2) and
routed evaluation, self-distillation, cRT and evaluation-only runs (tau-normalisation).

Official RIDE: ``model/ldam_drw_resnets/ea_resnet_cifar.py`` (what stage 2 freezes: ``__init__``
and ``_hook_before_iter``; routed inference: ``ResNet_s.forward``), ``model/loss.py:249-284``
and ``trainer/trainer.py`` (distillation).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import losses
from ride_jax.checkpointing import Checkpointer
from ride_jax.models import create_model
from ride_jax.train import load_run, make_forward, make_loss_fn, train_and_evaluate

from helpers import run_main, synthetic_config



_cfg = synthetic_config


def _state(workdir):
    ck = Checkpointer(str(workdir), asynchronous=False)
    state, _ = ck.read()
    ck.close()
    state.pop("rng")
    return jax.tree.map(np.asarray, state)


def _results(workdir):
    return json.loads((pathlib.Path(workdir) / "results.json").read_text())


_run_main = run_main


@pytest.fixture(scope="module")
def ride2(ride2_run):
    """A finished stage-1 RIDE-2 run (2 epochs; conftest's, shared)."""
    return ride2_run


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    """A finished stage-1 CE run (1 expert, linear head)."""
    d = tmp_path_factory.mktemp("ce")
    assert train_and_evaluate(_cfg("loss=ce"), str(d))["status"] == "finished"
    return d


def _opt_paths(state):
    """The parameter paths the optimiser state covers (momentum buffers)."""
    return {jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(state["opt_state"])
            if "trace" in jax.tree_util.keystr(p)}


def _assert_equal_trees(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_router_stage_then_routed_evaluation(ride2, tmp_path):
    """Stage 1 -> stage 2 (through main) -> evaluation-only run of the routed model."""
    s2 = tmp_path / "ea"
    out = _run_main(s2, "configs/synthetic_lt.py:smoke,experts=2,stage=router",
                    ["--config.data.remainder=drop", f"--config.init_from={ride2}"])
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = _state(ride2), _state(s2)
    # Stage 2 changes no backbone parameter and no BatchNorm statistic (bitwise).
    _assert_equal_trees(after["params"]["trunk"], before["params"]["trunk"])
    _assert_equal_trees(after["params"]["experts"], before["params"]["experts"])
    _assert_equal_trees(after["batch_stats"], before["batch_stats"])
    # Only the router trained: its optimiser state is all there is.
    paths = _opt_paths(after)
    assert paths and all("'router'" in p for p in paths), paths
    assert after["params"]["router"]["hidden"]["kernel"].shape == (1, 48, 16)
    # The router moved from its initialisation (which is a function of the seed).
    cfg = _cfg("experts=2,stage=router")
    from ride_jax.models import make_router
    model = create_model(num_classes=10, num_experts=2)
    init = make_router(model, (16, 16, 3), top_k=10).init_params(
        jax.random.fold_in(jax.random.split(jax.random.key(cfg.seed))[0], 1))
    assert not np.allclose(after["params"]["router"]["out"]["kernel"],
                           init["out"]["kernel"])

    last = _results(s2)["last"]
    used = last["experts_used"]["all"]
    assert len(used) == 2 and sum(used) == pytest.approx(1)
    assert last["mean_experts"] == pytest.approx(1 + used[1])
    macs = last["macs"]
    assert macs["per_k"][0] < macs["expected"] <= macs["per_k"][1] or used[1] == 0
    # The all-experts reading of the frozen network is stage 1's final evaluation.
    assert last["all_experts"]["accuracy"] == _results(ride2)["last"]["accuracy"]
    rows = [json.loads(l) for l in (s2 / "metrics.jsonl").read_text().splitlines()]
    # Official EA schedule: cosine over the epochs, per epoch, from 0.01 (2 epochs here).
    assert sorted({round(r["lr"], 8) for r in rows if r["kind"] == "train"}) == [0.005, 0.01]

    # Evaluation only, from the stage-2 run: the same routed numbers.
    ev = tmp_path / "ev"
    out = train_and_evaluate(_cfg("experts=2,stage=eval", init_from=str(s2)), str(ev))
    assert out["status"] == "finished" and out["step"] == 0
    assert out["last"]["accuracy"] == last["accuracy"]
    assert out["last"]["experts_used"] == last["experts_used"]
    # Forced on: every example uses both experts and the accuracy is the all-experts one.
    forced = train_and_evaluate(_cfg("experts=2,stage=eval", init_from=str(s2),
                                     **{"router.force_all": True}), str(tmp_path / "f"))
    assert forced["last"]["experts_used"]["all"] == [0.0, 1.0]
    assert forced["last"]["accuracy"] == last["all_experts"]["accuracy"]


def test_stages_reject_bad_setups(ride2, ce, tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        train_and_evaluate(_cfg("experts=2,stage=router"), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="num_experts"):
        train_and_evaluate(_cfg("experts=3,stage=router", init_from=str(ride2)),
                           str(tmp_path / "b"))
    with pytest.raises(ValueError, match=">= 2 experts"):
        train_and_evaluate(_cfg("loss=ce,stage=router", init_from=str(ce)),
                           str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_and_evaluate(_cfg("experts=2,stage=eval", init_from=str(tmp_path)),
                           str(tmp_path / "d"))
    with pytest.raises(ValueError, match="cosine heads"):
        train_and_evaluate(_cfg("experts=2,stage=eval", init_from=str(ride2), tau=1.0),
                           str(tmp_path / "e"))
    with pytest.raises(ValueError, match="teacher"):
        train_and_evaluate(_cfg("experts=2,stage=distill"), str(tmp_path / "f"))
    # A user error through main: one line, exit 2, no traceback.
    out = _run_main(tmp_path / "g", "configs/synthetic_lt.py:smoke,stage=router")
    assert out.returncode == 2 and "init_from" in out.stderr
    assert "Traceback" not in out.stderr


def test_crt_retrains_only_the_heads_and_tau_changes_evaluation(ce, tmp_path):
    crt = tmp_path / "crt"
    assert train_and_evaluate(_cfg("loss=ce,stage=crt", init_from=str(ce)),
                              str(crt))["status"] == "finished"
    before, after = _state(ce), _state(crt)
    _assert_equal_trees(after["params"]["trunk"], before["params"]["trunk"])
    _assert_equal_trees(after["batch_stats"], before["batch_stats"])
    for name, sub in after["params"]["experts"].items():
        if name != "linear":
            _assert_equal_trees(sub, before["params"]["experts"][name])
    assert not np.allclose(after["params"]["experts"]["linear"]["kernel"],
                           before["params"]["experts"]["linear"]["kernel"])
    paths = _opt_paths(after)
    assert paths and all("'experts/linear'" in p for p in paths), paths

    # Evaluation only: as stage 1's final evaluation without tau, different with it.
    plain = train_and_evaluate(_cfg("loss=ce,stage=eval", init_from=str(ce)),
                               str(tmp_path / "plain"))["last"]
    assert plain["accuracy"] == _results(ce)["last"]["accuracy"]
    assert plain["per_class"] == _results(ce)["last"]["per_class"]
    tau = train_and_evaluate(_cfg("loss=ce,stage=eval", init_from=str(ce), tau=1.0),
                             str(tmp_path / "tau"))["last"]
    assert tau["loss"] != pytest.approx(plain["loss"], rel=1e-6)


def test_distillation_loss_in_the_step_and_end_to_end(ride2, tmp_path):
    """The student step optimises E * (RIDE + T^2 KL(teacher || student)) with the teacher
    in training-mode BatchNorm (official quirk) or, as an option, inference mode."""
    cfg, tvars, _ = load_run(str(ride2))
    blocks = cfg["model"]["cifar_blocks"]               # the smoke recipe's ResNet-8
    teacher = create_model(num_classes=10, num_experts=2, cifar_blocks=blocks)
    student = create_model(num_classes=10, num_experts=3, cifar_blocks=blocks)
    x = jax.random.normal(jax.random.key(3), (8, 16, 16, 3))
    y = jnp.arange(8) % 10
    sv = student.init(jax.random.key(4), x)
    c = _cfg("experts=3,stage=distill")
    counts = np.array([40, 26, 17, 11, 7, 5, 3, 2, 2, 1]) * 4
    loss_fn = make_loss_fn(c.loss, counts, 30.0, stage="distill", distill=c.distill)
    for bn_train in (True, False):
        fwd = make_forward(student, teacher=teacher, teacher_bn_train=bn_train)
        out, _ = fwd(sv["params"], sv["batch_stats"], x, {"teacher": tvars})
        got, aux = loss_fn(out, y, 1)
        t = teacher.apply(tvars, x, train=bn_train)
        t_logits = (t[0] if bn_train else t)["logits"]
        s_out, _ = student.apply(sv, x, train=True)
        vec = losses.select_class_vectors(1, c.loss.reweight_epoch, losses.ride_class_vectors(
            counts, beta=c.loss.drw_beta, reweight_factor=c.loss.reweight_factor), 1.0)
        want, _ = losses.ride_distill_loss(
            s_out["expert_logits"], y, t_logits, distill_temperature=1.5,
            diversity_factor=-0.45, margins=vec.margins, class_weights=vec.class_weights,
            temperatures=vec.temperatures)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        ride, _ = losses.ride_loss(s_out["expert_logits"], y, diversity_factor=-0.45,
                                   margins=vec.margins, class_weights=vec.class_weights,
                                   temperatures=vec.temperatures)
        assert float(got) > 3 * float(ride)            # E * (...) with E = 3
    train_mode = teacher.apply(tvars, x, train=True)[0]["logits"]
    assert not np.allclose(train_mode, teacher.apply(tvars, x)["logits"])

    # End to end: a 3-expert student from the 2-expert teacher run.
    s = tmp_path / "student"
    out = train_and_evaluate(_cfg("experts=3,stage=distill",
                                  **{"distill.teacher": str(ride2)}), str(s))
    assert out["status"] == "finished"
    assert _state(s)["params"]["experts"]["linear"]["kernel"].shape[0] == 3
    _assert_equal_trees(_state(ride2)["params"], load_run(str(ride2))[1]["params"])
