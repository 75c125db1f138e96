"""RIDE models: parity with the official PyTorch ResNet32Model, sizes, vmap == loop."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import losses
from ride_jax.convert import from_official, to_official
from ride_jax.models import ARCHS, RIDEModel, count_params, create_model
from ride_jax.models.resnet_cifar import CifarExpert, CifarTrunk

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "official_ride_resnet32_c10_e2.npz") as f:
        return {k: f[k] for k in f.files}


def _state_dict(official):
    return {k[len("sd/"):]: v for k, v in official.items() if k.startswith("sd/")}


def _nhwc(official):
    return jnp.asarray(official["input_nchw"].transpose(0, 2, 3, 1))


# ----------------------------------------------------------------- official parity
def test_converted_official_model_eval_logits(official, x64):
    model, variables = from_official(_state_dict(official), arch="resnet32", num_classes=10,
                                     num_experts=2)
    assert variables["params"]["trunk"]["conv1"]["kernel"].dtype == jnp.float64
    out = model.apply(variables, _nhwc(official), train=False)
    np.testing.assert_allclose(out["expert_logits"], official["eval_expert_logits"],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["logits"], official["eval_mean_logits"], rtol=1e-6, atol=1e-9)


def test_converted_official_model_train_step_parity(official, x64):
    """Train-mode logits, the epoch-170 RIDE loss, every gradient, BN running stats."""
    model, variables = from_official(_state_dict(official), arch="resnet32", num_classes=10,
                                     num_experts=2)
    labels = jnp.asarray(official["targets"])
    vec = losses.ride_schedule(official["counts"], epoch=170, reweight_epoch=160,
                               reweight_factor=0.05)

    def loss_fn(params):
        out, new_state = model.apply({"params": params,
                                      "batch_stats": variables["batch_stats"]},
                                     _nhwc(official), train=True)
        loss, _ = losses.ride_loss(out["expert_logits"], labels, margins=vec.margins,
                                   class_weights=vec.class_weights,
                                   temperatures=vec.temperatures, diversity_factor=-0.45)
        return loss, (out, new_state)

    (loss, (out, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"])
    np.testing.assert_allclose(out["expert_logits"], official["train_expert_logits"],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["logits"], official["train_mean_logits"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loss, official["train_ride_loss_epoch170"], rtol=1e-6)

    official_grads = to_official({"params": grads}, model)
    expected = {k[len("grad/"):]: v for k, v in official.items() if k.startswith("grad/")}
    assert set(official_grads) == set(expected)
    for name, g in expected.items():
        np.testing.assert_allclose(official_grads[name], g, rtol=1e-6, atol=1e-9, err_msg=name)

    stats = to_official(new_state, model)
    expected = {k[len("sd_after_train_forward/"):]: v for k, v in official.items()
                if k.startswith("sd_after_train_forward/")}
    assert set(stats) == set(expected)
    for name, s in expected.items():
        np.testing.assert_allclose(stats[name], s, rtol=1e-6, atol=1e-12, err_msg=name)


def test_state_dict_round_trip(official, x64):
    sd = _state_dict(official)
    model, variables = from_official(sd, arch="resnet32", num_classes=10, num_experts=2)
    back = to_official(variables, model, prefix="")
    stripped = {k[len("backbone."):]: v for k, v in sd.items() if "num_batches" not in k}
    assert set(back) == set(stripped)
    for k, v in stripped.items():
        np.testing.assert_array_equal(back[k], v)


def test_converter_reads_npz_and_reports_mismatches(official, tmp_path):
    sd = _state_dict(official)
    path = tmp_path / "sd.npz"
    np.savez(path, **{"module." + k: v for k, v in sd.items()})
    model, variables = from_official(path, arch="resnet32", num_classes=10, num_experts=2)
    assert variables["params"]["experts"]["linear"]["kernel"].shape == (2, 48, 10)
    assert variables["params"]["trunk"]["conv1"]["kernel"].dtype == jnp.float32
    with pytest.raises(ValueError, match="num_experts=3"):
        from_official(sd, arch="resnet32", num_classes=10, num_experts=3)
    with pytest.raises(ValueError, match="shape"):
        from_official(sd, arch="resnet32", num_classes=100, num_experts=2)
    with pytest.raises(ValueError, match="no 'layer2.0.bn1.running_mean'"):
        from_official(sd, arch="resnet32", num_classes=10, num_experts=1)
    with pytest.raises(ValueError, match="no place.*layer5"):
        from_official({**sd, "backbone.layer5.0.conv1.weight": np.zeros(3)}, arch="resnet32",
                      num_classes=10, num_experts=2)
    with pytest.warns(UserWarning, match="router"):
        from_official({**sd, "backbone.expert_help_pred_fc.weight": np.zeros((1, 46))},
                      arch="resnet32", num_classes=10, num_experts=2)


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("key,experts,reduce", [("E1_full_dim", 1, False), ("E1", 1, True),
                                                ("E2", 2, True), ("E3", 3, True),
                                                ("E4", 4, True), ("E3_full_dim", 3, False)])
def test_cifar_parameter_and_mac_counts(key, experts, reduce):
    from ride_jax.flops import model_macs
    stats = json.loads((DATA / "model_stats.json").read_text())[key]
    model = create_model("resnet32", num_classes=100, num_experts=experts,
                         reduce_dimension=reduce)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert count_params(variables) == stats["params_total"]
    assert count_params({"params": variables["params"]["trunk"]}) == stats["params_shared"]
    macs = model_macs(model)
    assert macs.total == stats["macs_total_per_image"]
    assert macs.shared == stats["macs_shared_per_image"]
    assert macs.per_expert == stats["macs_per_expert_per_image"]
    assert macs.with_experts(1) == stats["macs_shared_per_image"] + stats[
        "macs_per_expert_per_image"]


# Parameter counts of the official ImageNet-size classes (docs/parity.md, in millions).
@pytest.mark.parametrize("arch,experts,classes,reduce,use_norm,millions", [
    ("resnext50", 1, 1000, False, False, 25.03),
    ("resnext50", 3, 1000, True, True, 42.89),
    ("resnet50", 3, 1000, True, True, 43.68),
    ("resnet10", 3, 1000, True, True, 9.40),
    ("resnet50", 3, 8142, True, True, 76.59),
    ("resnet50", 1, 8142, False, True, 40.18),
])
def test_imagenet_parameter_counts(arch, experts, classes, reduce, use_norm, millions):
    model = create_model(arch, num_classes=classes, num_experts=experts,
                         reduce_dimension=reduce, use_norm=use_norm)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert round(count_params(variables) / 1e6, 2) == millions


def test_imagenet_macs_match_standard_counts():
    from ride_jax.flops import model_macs
    # Standard conv+linear count of torchvision's ResNet-50: 4.09 GMACs (4,089,184,256).
    plain = model_macs(create_model("resnet50", num_classes=1000, num_experts=1,
                                    reduce_dimension=False, use_norm=False))
    assert plain.total == 4_089_184_256
    ride = model_macs(create_model("resnet50", num_classes=8142, num_experts=3))
    assert ride.heads == 1536 * 8142
    assert ride.total == ride.shared + 3 * ride.per_expert
    assert ride.expected([0.5, 0.25, 0.25]) == pytest.approx(
        0.5 * ride.with_experts(1) + 0.25 * ride.with_experts(2) + 0.25 * ride.with_experts(3))
    with pytest.raises(ValueError, match="summing to 1"):
        ride.expected([40.0, 30.0, 30.0])


def _small_cifar(num_experts=3, num_classes=7, expert_impl="vmap"):
    """ResNet-32's code with one block per stage (ResNet-8): fast to compile in tests."""
    return RIDEModel(CifarTrunk(blocks=1), CifarExpert(num_classes, blocks=1), num_experts,
                     num_classes, expert_impl, arch="resnet32")


# ------------------------------------------------------------- vmap == loop
@pytest.mark.parametrize("arch,size", [("resnet32", 32), ("resnet10", 32)])
def test_vmap_and_loop_experts_agree(arch, size, x64):
    if arch == "resnet32":
        vmapped, looped = _small_cifar(expert_impl="vmap"), _small_cifar(expert_impl="loop")
    else:
        vmapped = create_model(arch, num_classes=7, num_experts=3, expert_impl="vmap")
        looped = create_model(arch, num_classes=7, num_experts=3, expert_impl="loop")
    images = jax.random.normal(jax.random.key(1), (4, size, size, 3), jnp.float64)
    # Compiled as the trainer runs them (op by op, the ResNet-10 case took ~70 s here,
    # compiled ~36 s).
    variables = jax.jit(vmapped.init)(jax.random.key(0), images)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    labels = jnp.array([0, 3, 6, 2])

    def loss(model, params):
        out, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 images, train=True)
        value = losses.cross_entropy(out["expert_logits"].reshape(-1, 7), jnp.tile(labels, 3))
        return value + 0.1 * jnp.sum(out["features"] ** 2), (out, state)

    results = {}
    for name, model in (("vmap", vmapped), ("loop", looped)):
        (_, (out, state)), grads = jax.jit(jax.value_and_grad(
            lambda p: loss(model, p), has_aux=True))(variables["params"])
        results[name] = (out, state, grads, jax.jit(model.apply)(variables, images))
    for a, b in zip(jax.tree.leaves(results["vmap"]), jax.tree.leaves(results["loop"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    # The experts are different networks: their outputs differ.
    logits = results["vmap"][0]["expert_logits"]
    assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-3


def test_outputs_and_batch_stats_layout():
    model = _small_cifar(num_classes=10)
    images = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
    variables = model.init(jax.random.key(0), images)
    out = model.apply(variables, images)
    assert out["expert_logits"].shape == (3, 5, 10)
    assert out["features"].shape == (3, 5, 48)
    np.testing.assert_allclose(out["logits"], out["expert_logits"].mean(0), rtol=1e-6)
    assert float(jnp.abs(out["logits"]).max()) <= 30.0 + 1e-4  # cosine * s
    out_t, state = model.apply(variables, images, train=True)
    assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])
    # PyTorch momentum 0.1: new running mean = 0.9 * 0 + 0.1 * batch mean of the stem BN.
    h = jax.lax.conv_general_dilated(
        images, variables["params"]["trunk"]["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(state["batch_stats"]["trunk"]["bn1"]["mean"],
                               0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    n = 5 * 32 * 32
    np.testing.assert_allclose(state["batch_stats"]["trunk"]["bn1"]["var"],
                               0.9 + 0.1 * h.var((0, 1, 2)) * n / (n - 1), rtol=1e-4)
    assert not np.allclose(out_t["logits"], out["logits"])  # batch vs running statistics


def test_official_initialisation():
    model = create_model("resnet32", num_classes=100, num_experts=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    k = params["experts"]["layer3_1"]["conv1"]["kernel"]  # [E, 3, 3, 48, 48]
    assert abs(float(k.std()) - np.sqrt(2 / (9 * 48))) < 0.05 * np.sqrt(2 / (9 * 48))
    assert float(jnp.abs(k).max()) > 2.5 * np.sqrt(2 / (9 * 48))  # not truncated at 2 std
    w = params["experts"]["linear"]["kernel"]  # [E, 48, 100]
    np.testing.assert_allclose(jnp.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(w[0], w[1])
    bn = params["experts"]["layer2_0"]["bn1"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)
    big = create_model("resnet10", num_classes=10, num_experts=2)
    bv = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert bv["params"]["experts"]["layer4_0"]["conv2"]["kernel"].shape == (2, 3, 3, 384, 384)
    stem = big.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]["trunk"]["conv1"]
    assert abs(float(stem["kernel"].std()) - np.sqrt(2 / (49 * 64))) < 0.05 * np.sqrt(
        2 / (49 * 64))  # fan_out


# ------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors():
    model = create_model("resnet32", num_classes=10, num_experts=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="NCHW"):
        model.apply(variables, jnp.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"hold 2 experts .* num_experts=3"):
        create_model("resnet32", num_classes=10, num_experts=3).apply(
            variables, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnet18", num_classes=10)
    assert "resnet32" in ARCHS
    with pytest.raises(ValueError, match="'scan'"):
        create_model("resnet32", num_classes=10, expert_impl="scan")
    with pytest.raises(ValueError, match="num_experts"):
        create_model("resnet32", num_classes=10, num_experts=0)


# ------------------------------------------------------------- CIFAR depth
def test_cifar_blocks_sets_the_depth_of_the_cifar_resnet():
    """ResNet-(6n+2): parameter counts of He et al.'s CIFAR-10 networks (option-A
    shortcuts, a linear classifier with bias): ResNet-20 0.27M, ResNet-32 0.46M."""
    from ride_jax.models import count_params
    x = jnp.zeros((1, 32, 32, 3))
    counts = {}
    for n in (1, 3, 5):
        m = create_model("resnet32", num_classes=10, num_experts=1, reduce_dimension=False,
                         use_norm=False, cifar_blocks=n)
        counts[n] = count_params(jax.eval_shape(lambda: m.init(jax.random.key(0), x)))
    assert counts[3] == 269_722 and counts[5] == 464_154, counts
    assert counts[1] < counts[3]
    with pytest.raises(ValueError, match=r"cifar_blocks=0 is invalid: expected an integer >= 1"):
        create_model("resnet32", num_classes=10, cifar_blocks=0)
    with pytest.raises(ValueError, match=r"cifar_blocks=3 sets the depth of the CIFAR ResNet"):
        create_model("resnet10", num_classes=10, cifar_blocks=3)


def test_cifar_blocks_in_a_config_builds_that_network_and_is_checked():
    from ride_jax.config_checks import check_config
    from ride_jax.networks import model_from_config
    from helpers import synthetic_config
    c = synthetic_config("experts=2", **{"model.cifar_blocks": 1})
    model = model_from_config(c.model, 10)
    assert model.trunk.blocks == 1 and model.expert.blocks == 1
    # A run saved before the key existed reads as ResNet-32.
    old = {k: v for k, v in c.model.to_dict().items() if k != "cifar_blocks"}
    assert model_from_config(old, 10).trunk.blocks == 5
    bad = synthetic_config("experts=2", **{"model.cifar_blocks": 3, "model.arch": "resnet10"})
    with pytest.raises(ValueError, match=r"model.cifar_blocks=3 sets the depth"):
        check_config(bad)
