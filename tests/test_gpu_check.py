"""``benchmarks/gpu_check.sh`` (the one command of the owed GPU measurements) cannot rot:
its ``--tiny`` mode runs every section on this CPU with TensorFlow unimportable, as on
the lent GPU machines; ``--dry-run`` checks that the GPU-size commands still parse; the
data pack it carries to the device gives the same cache; bad options are one-line
errors."""

import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import no_tf_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("env", "tests", "prepare", "routed_eval", "vs_pytorch", "resnet50", "eval",
            "train_step", "input", "full_run_f32", "full_run_bf16")
GPU_ONLY = ("tests", "vs_pytorch", "resnet50")
NO_GPU = "skipped: no GPU (jax backend 'cpu')"


def _env(tmp_path):
    env = no_tf_env(tmp_path, PYTHON=sys.executable)
    env.pop("OUT", None)            # the device tool's variable: --out is given
    return env


def _check(tmp_path, *args, timeout=900):
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", *args], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    proc = _check(tmp, "--tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report, (out / "gpu_check.md").read_text(), out


def test_tiny_records_every_section_with_a_status(tiny):
    proc, report, _, out = tiny
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert list(report["sections"]) == list(SECTIONS)
    for name, sec in report["sections"].items():
        if name in GPU_ONLY:        # visible, not hidden
            assert sec["status"] == NO_GPU, (name, sec)
            assert f"{name}: {NO_GPU}" in proc.stdout
        else:
            assert sec["status"] == "ok", (name, sec)
            assert sec["wall_s"] > 0 and sec["time_cap_s"] > 0, (name, sec)
            assert sec["rows"], name
    assert report["mode"] == "tiny" and report["failed"] == []
    assert report["not_measured"] == list(GPU_ONLY)
    assert report["device_kind"] == "cpu" and report["backend"] == "cpu"
    import jax
    assert report["jax"] == jax.__version__
    assert report["date"] and report["wall_s"] > 0 and report["budget_s"] == 600
    # The sections ran where TensorFlow cannot be imported.
    assert report["machine"]["tensorflow_importable"] is False


def test_tiny_full_runs_finish_with_finite_results(tiny):
    _, report, _, _ = tiny
    cache = report["sections"]["prepare"]["rows"][0]
    assert cache["num_train"] > 0 and len(cache["fingerprint"]) == 64
    tiny_net = ["steps_per_call=0", "model.cifar_blocks=1"]      # --tiny: a ResNet-8
    for name, overrides in (("full_run_f32", tiny_net),
                            ("full_run_bf16", tiny_net + ["model.dtype=bfloat16"])):
        (row,) = report["sections"][name]["rows"]
        assert row["status"] == "finished", row
        assert row["overrides"] == overrides and row["steps_per_call"] == 0
        assert row["cache"].endswith("full_run.npz")
        assert row["evaluations"] == row["epochs"] == 2
        for key in ("wall_s", "train_images_per_s", "top1"):
            assert math.isfinite(row[key]), (name, key, row)
        assert row["wall_s"] > 0 and row["train_images_per_s"] > 0
        assert 0.0 <= row["top1"] <= 1.0


def test_tiny_rows_are_measured(tiny):
    _, report, _, _ = tiny
    sec = report["sections"]
    for name in ("eval", "train_step", "input"):
        for r in sec[name]["rows"]:
            assert r["status"] == "ok" and r["images_per_s"] > 0, (name, r)
    (routed,) = sec["routed_eval"]["rows"]
    assert routed["all"] > 0 and routed["masked"] > 0 and routed["routed"]["2"] > 0
    assert "--tiny" in sec["train_step"]["command"]


def test_tiny_markdown_has_a_row_and_a_table_per_section(tiny):
    _, _, md, _ = tiny
    lines = md.splitlines()
    start = lines.index("| section | status | wall s | time cap s |")
    summary = lines[start + 2:start + 2 + len(SECTIONS)]
    assert [x.split(" | ")[0] for x in summary] == [f"| {n}" for n in SECTIONS]
    for name in GPU_ONLY:
        assert f"| {name} | {NO_GPU} |" in md
    for name in SECTIONS:
        assert f"\n### {name}: " in md, name
    for header in ("| E | impl | barriers | batch | images/s | compile s | status |",
                   "| model | batch | images/s | compile s | status |",
                   "| pipeline | batch | images | images/s | status |",
                   "| setting | used 1..E | MACs/all | all img/s |",
                   "| config | overrides | epochs | evaluations | steps | wall s |"):
        assert header in md, header
    assert "Not measured by this run: tests, vs_pytorch, resnet50." in md
    assert "(--tiny: code-path check, the numbers are not measurements)" in md


def test_dry_run_commands_are_the_gpu_sizes_and_parse(tmp_path):
    """The GPU-size commands, run nowhere here, still parse: the suite's options through
    its own parser and recipe loader, the other scripts' options against their --help."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite
    out = tmp_path / "out"
    proc = _check(tmp_path, "--dry-run", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert list(sections) == list(SECTIONS)
    cache = tmp_path / "any.npz"
    cache.write_bytes(b"")
    commands = {}
    for name, sec in sections.items():
        assert sec["status"] == "dry run: not run", (name, sec)
        commands[name] = shlex.split(sec["command"])
    for name in ("resnet50", "eval", "train_step", "input", "full_run_f32", "full_run_bf16"):
        argv = commands[name][2:]
        assert commands[name][1] == "benchmarks/suite.py" and "--tiny" not in argv
        s = suite.resolve(suite.build_parser().parse_args(argv))
        assert s["selected"] == [name if name in suite.SECTIONS else "full_run"]
        if name.startswith("full_run"):
            config = suite.load_full_run_config(s["full_run_config"], str(cache),
                                                s["full_run_set"])
            assert config.epochs == 200 and config.steps_per_call == 0
            assert config.model.num_experts == 3
            assert config.model.dtype == ("bfloat16" if name.endswith("bf16") else "float32")
    s = suite.resolve(suite.build_parser().parse_args(commands["train_step"][2:]))
    assert s["experts"] == [1, 2, 3, 4] and s["batches"] == [128, 512]
    for name in ("routed_eval", "vs_pytorch"):
        help_text = subprocess.run([sys.executable, commands[name][1], "--help"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120).stdout
        options = [a for a in commands[name] if a.startswith("--")]
        assert options and all(o in help_text for o in options), (name, options)
    assert commands["vs_pytorch"][commands["vs_pytorch"].index("--torch-device") + 1] == "cuda"
    for path in (a for a in commands["tests"] if a.startswith("tests/")):
        assert (ROOT / path).is_file(), path
    assert "--junitxml" in commands["tests"] and commands["tests"][:3] == ["env", "-u", "CI"]
    assert any(a.startswith("configs/cifar10_jpeg_lt.py:path=") for a in commands["prepare"])


def test_without_a_gpu_the_full_sizes_are_refused(tmp_path):
    out = tmp_path / "out"
    proc = _check(tmp_path, "--out", str(out), "--only", "eval", timeout=300)
    assert proc.returncode == 1
    assert "jax sees no GPU (backend 'cpu')" in proc.stderr
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert sections["env"]["status"] == "ok"
    assert sections["eval"]["status"] == NO_GPU + "; use --tiny on a CPU"
    assert sections["train_step"]["status"] == "not selected (--only/--skip)"


def test_a_section_with_no_time_left_is_recorded_as_skipped(tmp_path):
    out = tmp_path / "out"
    proc = _check(tmp_path, "--tiny", "--only", "eval", "--budget", "30", "--out", str(out),
                  timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["sections"]["env"]["status"] == "ok"     # env always runs
    assert report["sections"]["eval"]["status"].startswith("skipped: budget spent")
    assert "eval" in report["not_measured"]


def _image_folder_zip(path, classes=3, per_class=10, test_per_class=2):
    from PIL import Image
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", per_class), ("test", test_per_class)):
            for c in range(classes):
                for i in range(n):
                    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                    f = pathlib.Path(path).with_suffix(".png")
                    img.save(f)
                    z.write(f, f"data/{split}/class{c}/{i:04d}.png")


def test_pack_keeps_the_listing_and_the_selected_images(tmp_path):
    """The carried data pack: every name stays, unselected training images are emptied,
    and the cache made from it is the one made from the original (same fingerprint)."""
    src, packed = tmp_path / "src.zip", tmp_path / "packed.zip"
    _image_folder_zip(src)
    env = _env(tmp_path)
    helper = [sys.executable, "benchmarks/gpu_check_report.py"]
    config = "configs/cifar10_jpeg_lt.py:ratio=10"
    proc = subprocess.run(helper + ["pack", "--data", str(src), "--out", str(packed),
                                    "--config", config], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["train_files"] == 30 and summary["train_kept"] == 10 + 3 + 1
    with zipfile.ZipFile(packed) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    assert len(sizes) == 36 and sum(1 for s in sizes.values() if s == 0) == 30 - 14
    assert all(sizes[f"test/class{c}/{i:04d}.png"] > 0 for c in range(3) for i in range(2))
    prints = []
    for data in (src, packed):
        cache = tmp_path / f"{data.stem}.npz"
        proc = subprocess.run(helper + ["prepare", "--config", f"{config},path={data}",
                                        "--out", str(cache), "--json", f"{cache}.json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        prints.append(json.loads(pathlib.Path(f"{cache}.json").read_text()))
        with np.load(cache) as npz:
            prints[-1]["test_images"] = npz["test_images"].tobytes()
    assert prints[0]["fingerprint"] == prints[1]["fingerprint"]
    assert prints[0]["num_train"] == 14 and prints[0]["head"] == 10 and prints[0]["tail"] == 1
    assert prints[0]["test_images"] == prints[1]["test_images"]


@pytest.mark.parametrize("args, named", [
    (["--bogus"], "'--bogus'"),
    (["--budget", "soon"], "'soon'"),
    (["--budget", "5"], "'5'"),
    (["--only", "train_step,nope"], "'nope'"),
    (["--skip", "env"], "--skip env"),
    (["--out"], "--out needs a value"),
    (["--tiny=yes"], "'--tiny=yes'"),
    (["--cache", "/no/such/cache.npz"], "'/no/such/cache.npz'"),
    (["--data", "/no/such/cifar10.zip"], "'/no/such/cifar10.zip'"),
    (["--wheels", "/no/such/wheels"], "'/no/such/wheels'"),
])
def test_bad_option_is_a_one_line_error(tmp_path, args, named):
    proc = _check(tmp_path, *args, "--out", str(tmp_path / "o"), timeout=60) \
        if args != ["--out"] else _check(tmp_path, *args, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("benchmarks/gpu_check.sh: error: ") and named in lines[0]
    assert proc.stdout == ""
    if args[0] == "--only":
        assert "valid sections: " + " ".join(SECTIONS) in lines[0]
