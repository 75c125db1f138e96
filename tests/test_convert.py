"""The torch-free .pth reader (ride_jax.torch_pickle) and from_official on a .pth.

The fixture official_ride_resnet32_c10_e2_f32.pth was written by torch 2.13 (see
tests/data/make_pth_fixture.py); nothing here needs torch.
"""

import contextlib
import io
import pathlib
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ride_jax import torch_pickle
from ride_jax.convert import from_official
from ride_jax.torch_pickle import PickledObject, load_pth

DATA = pathlib.Path(__file__).parent / "data"
PTH = DATA / "official_ride_resnet32_c10_e2_f32.pth"
CANARY = "RIDE_JAX_CANARY: unpickling this checkpoint ran pickled code"


@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "official_ride_resnet32_c10_e2.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def checkpoint():
    return load_pth(PTH)


@pytest.fixture
def no_torch(monkeypatch):
    """`import torch` raises ImportError, whether or not torch is installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def _expected_extras():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {
        "base": base,
        "transposed": base.T,
        "window": base[1:, 1:3],
        "every_third": base.reshape(-1)[1::3],
        "scalar_view": np.array(11.0, np.float32),
        "scalar": np.array(-2.5, np.float32),
        "expanded": np.broadcast_to(np.arange(3, dtype=np.float32).reshape(3, 1), (3, 4)),
        "half": np.array([0.5, -1.25, 65504.0, 2.0**-24], np.float16),
        "bfloat16": np.array([1.0, -2.5, 0.15625, 2.0**100], ml_dtypes.bfloat16),
        "float64": np.array([np.pi, -1e300], np.float64),
        "int8": np.array([-128, 0, 127], np.int8),
        "bool": np.array([[True, False, True], [False, False, True]]),
        "uint16": np.array([0, 1, 65535], np.uint16),
        "conj": np.array([1 - 2j, 3 + 1j], np.complex64),
        "parameter": np.arange(6, dtype=np.float32).reshape(2, 3),
        "empty": np.zeros((0, 3), np.float32),
    }


# ------------------------------------------------------------------ the fixture file
def test_fixture_is_a_small_torch_zip():
    assert PTH.stat().st_size < 3_000_000
    with zipfile.ZipFile(PTH) as zf:
        names = zf.namelist()
    assert "official_ride_resnet32_c10_e2_f32/data.pkl" in names
    # 308 state_dict tensors, 1 momentum buffer, 12 storages for the 16 extras (the
    # five views of extras['base'] share one).
    assert sum(n.split("/")[1] == "data" for n in names) == 308 + 1 + 12


def test_reader_checkpoint_layout(checkpoint):
    assert set(checkpoint) == {"arch", "epoch", "state_dict", "optimizer", "monitor_best",
                               "config", "extras"}
    assert checkpoint["arch"] == "ResNet32Model"
    assert checkpoint["epoch"] == 200
    assert checkpoint["monitor_best"] == 0.5
    opt = checkpoint["optimizer"]
    assert opt["param_groups"] == [{"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
                                    "nesterov": False, "params": [0]}]
    np.testing.assert_array_equal(opt["state"][0]["momentum_buffer"],
                                  np.full((16, 3, 3, 3), 0.25, np.float32))


def test_reader_state_dict_equals_npz(checkpoint, official):
    sd = checkpoint["state_dict"]
    assert type(sd) is OrderedDict
    expected = {k[len("sd/"):]: v for k, v in official.items() if k.startswith("sd/")}
    assert list(sd) == list(expected)  # same names, same order
    for name, want in expected.items():
        got = sd[name]
        assert isinstance(got, np.ndarray), name
        if name.endswith("num_batches_tracked"):
            assert got.dtype == np.int64 and got.shape == () and got == want, name
        else:
            assert got.dtype == np.float32, name
            assert got.flags.c_contiguous and got.flags.writeable, name
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)


@pytest.mark.parametrize("name", sorted(_expected_extras()))
def test_reader_tricky_tensors(checkpoint, name):
    want = _expected_extras()[name]
    got = checkpoint["extras"][name]
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_reader_copies_views_apart(checkpoint):
    """Tensors that shared a storage come back as independent arrays."""
    extras = checkpoint["extras"]
    assert not np.shares_memory(extras["base"], extras["window"])
    assert extras["transposed"].flags.c_contiguous


# ------------------------------------------------------------------------- safety
def test_reader_stubs_the_pickled_config_without_running_it(capsys):
    config = load_pth(PTH)["config"]
    assert isinstance(config, PickledObject)
    assert (type(config).pickle_module, type(config).pickle_name) == ("__main__", "ConfigParser")
    assert config.args == ()
    state = config.state
    assert state["_config"]["arch"]["args"]["num_experts"] == 2
    assert state["resume"] is None
    save_dir = state["_save_dir"]
    assert type(save_dir).qualname() == "pathlib.PurePosixPath"
    assert "/".join(save_dir.args) == "saved/models/CIFAR10_LT_RIDE/0101_000000"
    canary = state["canary"]
    assert type(canary).qualname() == "builtins.print"  # a protocol-2 __builtin__.print
    assert canary.args == (CANARY,)
    assert CANARY not in capsys.readouterr().out


class _Exec:
    def __reduce__(self):
        return (exec, ("import sys; sys.ride_jax_pwned = True",))


def _zip(path, records: dict):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in records.items():
            zf.writestr(name, data)


def test_reader_never_calls_pickled_globals(tmp_path):
    path = tmp_path / "evil.pth"
    _zip(path, {"evil/data.pkl": pickle.dumps({"state_dict": _Exec()}, protocol=2)})
    obj = load_pth(path)
    assert not hasattr(sys, "ride_jax_pwned")
    assert type(obj["state_dict"]).qualname() == "builtins.exec"
    with pytest.raises(TypeError, match="builtins.exec"):
        from_official(path, arch="resnet32", num_classes=10, num_experts=2)
    assert not hasattr(sys, "ride_jax_pwned")


# ------------------------------------------------- crafted checkpoints (no torch)
class _Storage:
    def __init__(self, key, type_name, numel):
        self.key, self.type_name, self.numel = key, type_name, numel


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())


def _craft(path, obj, storages: dict, byteorder=None):
    """A minimal torch.save look-alike: ``_Tensor`` -> ``torch._utils._rebuild_tensor_v2``
    and ``_Storage`` -> a persistent id, pickled against stand-in torch modules."""
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")
    fake_torch._utils = fake_utils

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(fake_torch, name, type(name, (), {"__module__": "torch"}))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", getattr(fake_torch, obj.type_name), obj.key, "cpu",
                        obj.numel)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                return (_rebuild_tensor_v2, obj.args)
            return NotImplemented

    buf = io.BytesIO()
    with _patched_modules({"torch": fake_torch, "torch._utils": fake_utils}):
        Pickler(buf, protocol=2).dump(obj)
    records = {"archive/data.pkl": buf.getvalue()}
    records.update({f"archive/data/{k}": v for k, v in storages.items()})
    if byteorder:
        records["archive/byteorder"] = byteorder
    _zip(path, records)


@contextlib.contextmanager
def _patched_modules(modules):
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_crafted_shared_storage_offsets_strides(tmp_path):
    values = np.arange(24, dtype=np.float32)
    s = _Storage("0", "FloatStorage", 24)
    obj = {"a": _Tensor(s, 3, (2, 3), (1, 5)), "b": _Tensor(s, 23, (), ()),
           "c": _Tensor(s, 0, (4,), (0,))}
    _craft(tmp_path / "x.pth", obj, {"0": values.tobytes()})
    got = load_pth(tmp_path / "x.pth")
    np.testing.assert_array_equal(got["a"], [[3, 8, 13], [4, 9, 14]])
    assert got["b"].shape == () and got["b"] == 23
    np.testing.assert_array_equal(got["c"], [0, 0, 0, 0])


def test_crafted_big_endian_storage(tmp_path):
    s = _Storage("0", "LongStorage", 3)
    _craft(tmp_path / "x.pth", {"a": _Tensor(s, 0, (3,), (1,))},
           {"0": np.array([1, -2, 2**40], ">i8").tobytes()}, byteorder="big")
    got = load_pth(tmp_path / "x.pth")["a"]
    assert got.dtype == np.int64 and got.dtype.isnative
    np.testing.assert_array_equal(got, [1, -2, 2**40])


@pytest.mark.parametrize("offset,size,stride,match", [
    (10, (4,), (1,), "reads past"),
    (0, (3, 5), (5, 1), "reads past"),
    (0, (3,), (-1,), "non-negative"),
    (0, (2, 2), (1,), "differ in length"),
])
def test_crafted_out_of_bounds_views_are_refused(tmp_path, offset, size, stride, match):
    s = _Storage("0", "FloatStorage", 12)
    _craft(tmp_path / "x.pth", {"a": _Tensor(s, offset, size, stride)},
           {"0": np.zeros(12, np.float32).tobytes()})
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_pth(tmp_path / "x.pth")


def test_crafted_short_or_missing_storage(tmp_path):
    s = _Storage("0", "FloatStorage", 12)
    _craft(tmp_path / "short.pth", {"a": _Tensor(s, 0, (12,), (1,))},
           {"0": np.zeros(11, np.float32).tobytes()})
    with pytest.raises(pickle.UnpicklingError, match="12 x 4 expected"):
        load_pth(tmp_path / "short.pth")
    _craft(tmp_path / "missing.pth", {"a": _Tensor(s, 0, (12,), (1,))}, {})
    with pytest.raises(pickle.UnpicklingError, match="no storage record archive/data/0"):
        load_pth(tmp_path / "missing.pth")


# ------------------------------------------------------------------ from_official
def test_from_official_reads_pth_without_torch(official, no_torch):
    with pytest.raises(ImportError):
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    model, variables = from_official(PTH, arch="resnet32", num_classes=10, num_experts=2)
    assert variables["params"]["trunk"]["conv1"]["kernel"].dtype == jnp.float32
    out = model.apply(variables, jnp.asarray(official["input_nchw"].transpose(0, 2, 3, 1)),
                      train=False)
    np.testing.assert_allclose(out["logits"], official["eval_mean_logits"], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(out["expert_logits"], official["eval_expert_logits"],
                               rtol=1e-5, atol=1e-5)


def test_legacy_file_needs_torch(tmp_path, no_torch):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2) + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"legacy format.*pip install torch"):
        from_official(path, arch="resnet32", num_classes=10, num_experts=2)
    with pytest.raises(ValueError, match=r"not a zip checkpoint.*pip install torch"):
        load_pth(path)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ValueError, match="pip install torch"):
        from_official(junk, arch="resnet32", num_classes=10, num_experts=2)


def test_legacy_file_goes_to_torch_load_when_torch_is_there(tmp_path, official, monkeypatch):
    calls = []
    sd = {k[len("sd/"):]: v for k, v in official.items() if k.startswith("sd/")}

    def load(path, map_location, weights_only):
        calls.append((path, map_location, weights_only))
        return {"epoch": 1, "state_dict": sd}

    fake = types.ModuleType("torch")
    fake.load = load
    monkeypatch.setitem(sys.modules, "torch", fake)
    path = tmp_path / "legacy.pth"
    path.write_bytes(b"\x80\x02legacy")
    from_official(path, arch="resnet32", num_classes=10, num_experts=2)
    from_official(path, arch="resnet32", num_classes=10, num_experts=2, allow_pickle=True)
    assert calls == [(str(path), "cpu", True), (str(path), "cpu", False)]
    # A zip checkpoint never goes to torch.load, torch or not.
    from_official(PTH, arch="resnet32", num_classes=10, num_experts=2)
    assert len(calls) == 2


def test_zip_without_data_pkl(tmp_path, no_torch):
    path = tmp_path / "notorch.pth"
    _zip(path, {"archive/weights.bin": b"\x00" * 16})
    with pytest.raises(ValueError, match="no <archive>/data.pkl"):
        load_pth(path)
    with pytest.raises(ValueError, match="no <archive>/data.pkl"):
        from_official(path, arch="resnet32", num_classes=10, num_experts=2)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        from_official(tmp_path / "nope.pth", arch="resnet32", num_classes=10, num_experts=2)


def test_reader_accepts_file_objects():
    with open(PTH, "rb") as f:
        assert torch_pickle.is_torch_zip(f)
        sd = load_pth(f)["state_dict"]
    assert sd["backbone.conv1.weight"].shape == (16, 3, 3, 3)
