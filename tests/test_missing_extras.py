"""Without the ``tf`` extra, a tfds-backed recipe is a one-line error naming the extra.

The base install (``pip install ride-jax``) has no TensorFlow or tensorflow-datasets;
the tfds sources (CIFAR-10/100-LT and the streamed ImageNet-LT, iNaturalist 2018 and
Places-LT) need them. Here they are made unimportable: with ``sys.modules[name] = None``
in the test process (monkeypatched, so restored after) and, for the command line, with
a ``sitecustomize`` on ``PYTHONPATH`` of the subprocess.
"""

import pathlib
import sys

import pytest

from ride_jax.data import registry

from helpers import run_without_tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
TFDS_NAMES = ("cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018", "places_lt")


def _message(name):
    return (f"dataset {name!r} needs TensorFlow and tensorflow-datasets, which the base "
            f"install leaves out: pip install 'ride-jax[tf]' (or -e '.[tf]' in a checkout)")


@pytest.fixture
def no_tensorflow(monkeypatch):
    """TensorFlow and tfds unimportable, and the tfds sources not yet imported."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets") or name in (
                "ride_jax.data.tfds_sources", "ride_jax.data.streaming"):
            monkeypatch.delitem(sys.modules, name)
    for name in ("tensorflow", "tensorflow_datasets"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_dataset_builder_names_the_extra(no_tensorflow, name):
    with pytest.raises(ValueError) as err:
        registry.dataset_builder(name)
    assert str(err.value) == _message(name)
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert err.value.__cause__.name in ("tensorflow", "tensorflow_datasets")
    # the other entry points go through dataset_builder
    with pytest.raises(ValueError, match=r"pip install 'ride-jax\[tf\]'"):
        registry.dataset_arguments(name)
    with pytest.raises(ValueError, match=r"pip install 'ride-jax\[tf\]'"):
        registry.load_dataset(name)


def test_in_memory_names_need_no_tensorflow(no_tensorflow):
    assert callable(registry.dataset_builder("synthetic_lt"))
    assert callable(registry.dataset_builder("image_folder_lt"))
    assert callable(registry.dataset_builder("fashion_mnist_lt"))
    assert "ride_jax.data.tfds_sources" not in sys.modules


def test_other_missing_modules_are_not_renamed(monkeypatch):
    monkeypatch.setitem(registry._SOURCES, "fake", ("ride_jax_no_such_module", "fake"))
    with pytest.raises(ModuleNotFoundError) as err:
        registry.dataset_builder("fake")
    assert err.value.name == "ride_jax_no_such_module"
    assert registry._is_tensorflow("tensorflow.python.framework")
    assert registry._is_tensorflow("tensorflow_datasets.core")
    assert not registry._is_tensorflow("tensorflow_probability")
    assert not registry._is_tensorflow("tensorboard")
    assert not registry._is_tensorflow(None)


@pytest.mark.parametrize("recipe,name", [("configs/inat2018.py", "inat2018"),
                                         ("configs/cifar100_lt.py:smoke", "cifar100_lt")])
def test_main_without_tf_extra(tmp_path, recipe, name):
    workdir = tmp_path / "w"
    proc = run_without_tf(tmp_path, "-m", "ride_jax.main", f"--config={recipe}",
                           f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {_message(name)}"], proc.stderr[-3000:]
    # any log line naming the extra carries the same one-line message
    naming = [line for line in proc.stderr.splitlines() if "ride-jax[tf]" in line]
    assert naming and all(line.endswith(_message(name)) for line in naming), naming
    # nothing was written for a run that could not start
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(
        str(p.relative_to(workdir)) for p in workdir.rglob("*"))
