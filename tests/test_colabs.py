"""The Colab notebooks in colabs/: stored without outputs, one ``parameters`` cell each,
and executed top to bottom (nbclient, a python3 kernel on the CPU) with that cell
replaced by a tiny setting: RIDE-2 on the synthetic smoke recipe for one epoch of 4
steps, 2 resamples in the study, workdirs under pytest's temporary folders. The analysis
notebook reuses the quick start's run, as it does by default when both run in one folder.

The kernel imports ``ride_jax`` and ``configs`` from this checkout (``PYTHONPATH``) and
inherits the session's persistent XLA cache (``tests/conftest.py``), so the runs of one
network compile it once.
"""

from __future__ import annotations

import ast
import json
import os
import re

import pytest

from helpers import ROOT

COLABS = ROOT / "colabs"
NOTEBOOKS = ("01_quickstart.ipynb", "02_composing_losses.ipynb", "03_analysis.ipynb")
# What the notebooks may import: the project, numpy, jax, matplotlib, IPython.display and
# the standard library modules they use.
ALLOWED_IMPORTS = {"ride_jax", "configs", "numpy", "jax", "matplotlib", "IPython",
                   "importlib", "subprocess", "sys", "os", "json"}
# RIDE-2 on the synthetic smoke recipe (16x16 images, 159 training and 80 test images) for
# one epoch of batch 32 with the last partial batch dropped: 4 steps, one compiled shape.
TINY_ARGS = '"smoke,experts=2"'
TINY_RUN = '{"epochs": 1, "data.remainder": "drop"}'
# Routed evaluation with one bucket size (the whole batch): the smallest program.
TINY_ROUTED_RUN = '{"epochs": 1, "data.remainder": "drop", "router.num_buckets": 1}'


def _tiny_parameters(name: str, tmp_path, stage1=None) -> str:
    """The source that replaces the notebook's ``parameters`` cell in CI (``stage1``: the
    quick start's workdir, for the analysis notebook to reuse)."""
    if name == "01_quickstart.ipynb":
        return "\n".join([
            'DATASET = "synthetic_lt"',
            f"RECIPE_ARGS = {TINY_ARGS}",
            "EPOCHS = 1",
            'OVERRIDES = {"data.remainder": "drop"}',
            f"WORKDIR = {str(tmp_path / 'quickstart')!r}",
        ])
    if name == "02_composing_losses.ipynb":
        return "\n".join(["NUM_CLASSES = 10", "IMG_MAX = 500", "RATIO = 100.0",
                          "NUM_EXPERTS = 2", "BATCH = 16", "SEED = 1",
                          'TRAIN_DATASET = "synthetic_lt"', f"TRAIN_ARGS = {TINY_ARGS}",
                          f"TRAIN_OVERRIDES = {TINY_RUN}",
                          f"TRAIN_WORKDIR = {str(tmp_path / 'own_loss')!r}"])
    if name == "03_analysis.ipynb":
        return "\n".join([
            f"RECIPE_ARGS = {TINY_ARGS}",
            f"OVERRIDES = {TINY_ROUTED_RUN}",
            'STAGE1_DATASET = "synthetic_lt"',
            f"STAGE1_WORKDIR = {str(stage1 or tmp_path / 'stage1')!r}",
            f"ROUTER_WORKDIR = {str(tmp_path / 'router')!r}",
            'STUDY_DATASET = "synthetic_lt"',
            f"STUDY_ARGS = {TINY_ARGS}",
            f"STUDY_OVERRIDES = {TINY_RUN}",
            "STUDY_RESAMPLES = 2",
            f"STUDY_WORKDIR = {str(tmp_path / 'study')!r}",
            'XLA_CACHE_DIR = ""',
        ])
    raise KeyError(name)


def _read(name: str):
    # The notebook tools are dev extras: a plain install skips with their name; CI
    # installs them, and under CI=true conftest turns any skip into a failure.
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(COLABS / name, as_version=4)


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _imported_modules(source: str) -> set[str]:
    # IPython magics (a line starting with % or !) are not Python: leave them out.
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    out = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped_with_one_parameters_cell(name, tmp_path):
    nb = _read(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs (strip them)"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    params = _parameters_cells(nb)
    assert len(params) == 1 and params[0].cell_type == "code", \
        f"{name}: exactly one code cell must be tagged 'parameters'"
    # The CI setting replaces every knob the notebook has, and nothing else.
    assert _assigned_names(_tiny_parameters(name, tmp_path)) == _assigned_names(params[0].source)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    install = [c for c in code if "RIDE_JAX_SOURCE" in c.source]
    assert len(install) == 1 and 'find_spec("ride_jax") is None' in install[0].source
    imported = set().union(*(_imported_modules(c.source) for c in code))
    assert imported <= ALLOWED_IMPORTS, f"{name} imports {sorted(imported - ALLOWED_IMPORTS)}"


def _execute(name: str, tmp_path, stage1=None):
    """Runs the notebook with the tiny parameters in ``tmp_path``; returns it executed."""
    pytest.importorskip("ipykernel")         # dev extras, as in _read
    nbclient = pytest.importorskip("nbclient")
    nb = _read(name)
    (cell,) = _parameters_cells(nb)
    cell.source = _tiny_parameters(name, tmp_path, stage1)
    with pytest.MonkeyPatch.context() as mp:
        # The kernel is a subprocess: it inherits these (and the XLA cache of conftest.py).
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()        # CellExecutionError on the first failing cell
    return nb


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quick start executed once: ``(its folder, the executed notebook)``."""
    d = tmp_path_factory.mktemp("colab01")
    return d, _execute("01_quickstart.ipynb", d)


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def _png_outputs(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def test_quickstart_runs(quickstart):
    tmp_path, nb = quickstart
    out = _stdout(nb)
    assert "finished at step 4" in out
    m = re.search(r"test accuracy\s+([\d.]+)% \| many\s+(n/a|[\d.]+%) \| medium\s+([\d.]+)% "
                  r"\| few\s+([\d.]+)%", out)
    assert m, out
    results = json.loads((tmp_path / "quickstart" / "results.json").read_text())
    assert float(m.group(1)) == pytest.approx(100 * results["last"]["accuracy"], abs=0.051)
    assert (tmp_path / "quickstart" / "analysis" / "accuracy_vs_count.png").exists()
    assert _png_outputs(nb) >= 2          # the analysis figure and the inline plot


def test_composing_losses_runs(tmp_path):
    nb = _execute("02_composing_losses.ipynb", tmp_path)
    out = _stdout(nb)
    assert out.count("jitted switch equals ride_schedule: True") == 2
    assert "diversity_kl_k]: checked" in out
    assert "frequency groups equal (counts decrease with the index): True" in out
    m = re.search(r"LDAM-focal ([\d.]+)\s+\(focal_loss on the LDAM logits ([\d.]+)\)", out)
    assert m and m.group(1) == m.group(2), out
    assert re.search(r"lambda -0\.45: RIDE loss [\d.]+", out)
    assert _png_outputs(nb) >= 2
    # Section 5: the notebook's own loss trained through train_and_evaluate, its aux
    # terms logged; the loss is 0.9 x ride + 0.1 x smoothing, as the notebook defines it.
    assert "loss __main__:make_loss" in out
    assert "finished at step 4" in out
    config = json.loads((tmp_path / "own_loss" / "config.json").read_text())
    assert config["loss"]["name"] == "__main__:make_loss" and config["epochs"] == 1
    rows = [json.loads(line) for line in (tmp_path / "own_loss" / "metrics.jsonl")
            .read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train and all(r["smoothing"] > 0 for r in train)
    for r in train:
        assert r["loss"] == pytest.approx(0.9 * r["ride"] + 0.1 * r["smoothing"], rel=1e-5)
    assert len(re.findall(r"step +\d+: loss [\d.]+ = 0\.9 \* ride", out)) == len(train)


def test_analysis_runs(quickstart, tmp_path):
    stage1 = quickstart[0] / "quickstart"
    nb = _execute("03_analysis.ipynb", tmp_path, stage1)
    out = _stdout(nb)
    assert f"reusing the run in {stage1}" in out
    assert re.search(r"ensemble\s+[\d.]+%", out) and re.search(r"expert 1\s+[\d.]+%", out)
    assert re.search(r"routed: accuracy\s+[\d.]+% with [\d.]+ of 2 experts", out), out
    assert re.search(r"all\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out       # the study's table
    assert (tmp_path / "router" / "analysis" / "expert_usage.png").exists()
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert study["resamples"] == 2 and study["resample_arg"] == "subset_seed"
    assert [json.loads((tmp_path / "study" / f"resample_{k:02d}" / "config.json").read_text())
            ["dataset"]["args"]["subset_seed"] for k in range(2)] == [0, 1]
    # hardest negatives, expert usage and bias/variance: each a file and an inline plot
    assert _png_outputs(nb) >= 6
