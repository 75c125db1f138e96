"""The benchmark suite: one entry point, one table per section, every row in JSON.

    python benchmarks/suite.py                                  # everything but the full run
    python benchmarks/suite.py --json bench.json                # ... and write the rows
    python benchmarks/suite.py --only train_step --experts 3 --batches 512
    python benchmarks/suite.py --full-run --full-run-cache /data/cifar10_jpeg_lt.npz
    python benchmarks/suite.py --only full_run --full-run --full-run-cache /data/c10.npz \
        --full-run-set steps_per_call=0            # a whole epoch per compiled call (GPU)
    python benchmarks/suite.py --tiny --json /tmp/tiny.json     # CI: every code path, ~1.5 min

Sections (``--only a,b`` / ``--skip a,b``):

* ``train_step``: the jitted RIDE ResNet-32 train step (CIFAR-100, reduced experts, the
  RIDE loss after the DRW switch, SGD; ``train_step.bench_side_by_side``) for E in ``--experts``
  x batch in ``--batches`` x ``--impls``: median images/s of ``--repeats`` timed runs of
  ``--steps`` steps, compile time of the first call.
* ``resnet50``: the RIDE ResNet-50 train step of ``configs/imagenet_lt.py`` (1000 classes,
  ``--resnet50-experts`` (3) reduced experts with cosine heads, RIDE loss lambda -0.2 and
  reweight factor 0.02 after the switch, nesterov SGD wd 2e-4) at ``--resnet50-image``
  (224) for batch in ``--resnet50-batches`` (64,128). GPU/TPU only: on a CPU backend the
  rows are listed as skipped unless ``--force-resnet50``.
* ``input``: the in-memory device loader (``input_pipeline.bench_loader``) on a
  synthetic CIFAR-100-LT-sized set (``--input-img-max`` 500: 10,847 images 32x32x3), whole
  epochs, augmentations none / ldam / ride, batch in ``--input-batches``. No TensorFlow.
* ``eval``: the jitted evaluation forward (``model.apply(..., train=False)``) of RIDE
  ResNet-32 E=3 (CIFAR-100) at ``--eval-batch``: median images/s, compile time.
* ``full_run``: wall time of ``ride_jax.train.train_and_evaluate`` on a recipe
  (``--full-run-config``, default ``configs/cifar10_jpeg_lt.py``: the official 200-epoch
  RIDE-3 recipe, evaluated every epoch), data loading included; ``--full-run-cache``
  reads a prepared ``.npz`` instead (no TensorFlow); ``--full-run-set KEY=VALUE``
  overrides config keys (``steps_per_call``, ``model.dtype``, ...). Opt-in with
  ``--full-run`` (naming it in ``--only`` is not enough): it takes hours on a CPU.

After each section the peak memory of the process so far is reported: the device's
``peak_bytes_in_use`` where the backend gives it (GPU), and the host's peak RSS (always;
it is host memory, never reported as device memory). ``--tiny`` is the CI preset
(options given explicitly override it, see ``TINY``): a few steps of every section with
one expert where the number is free (ResNet-32 E=1 train step, ResNet-50 E=1 forced at
32x32, the full run on ``configs/synthetic_lt.py:smoke,experts=1``), compiled at LLVM
-O0 (``TINY_XLA_FLAG``): it checks that every code path runs in about a minute and a
half on a 2-core CPU, its numbers are not measurements.

Model variables are drawn on the host (``train_step.host_variables``) rather than by a
jitted ``model.init``: the timed programs are the same, and the initialiser of a big
network would take tens of seconds to compile on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):              # the sibling benchmarks, ride_jax and configs/
    if _p not in sys.path:
        sys.path.insert(0, _p)

SECTIONS = ("train_step", "resnet50", "input", "eval", "full_run")
DEFAULT_FULL_RUN_CONFIG = "configs/cifar10_jpeg_lt.py"
AUGMENTS = ("none", "ldam", "ride")

# Option defaults (None in argparse, so that --tiny can tell what was given explicitly).
DEFAULTS = {
    "experts": "1,2,3,4", "batches": "128,512", "impls": "loop", "cpu_convolutions": "eigen",
    "steps": 10, "repeats": 3,
    "dtype": "float32", "resnet50_batches": "64,128", "resnet50_image": 224,
    "resnet50_experts": 3,
    "force_resnet50": False, "input_batches": "128,512", "input_img_max": 500,
    "eval_batch": 512, "full_run": False, "full_run_config": DEFAULT_FULL_RUN_CONFIG,
}
TINY = {
    "experts": "1", "batches": "8", "steps": 2, "repeats": 1,
    "resnet50_batches": "2", "resnet50_image": 32, "resnet50_experts": 1,
    "force_resnet50": True,
    "input_batches": "16", "input_img_max": 100, "eval_batch": 16,
    "full_run": True, "full_run_config": "configs/synthetic_lt.py:smoke,experts=1",
}
# --tiny compiles with LLVM at -O0 (about half the compile time on a CPU, slower code):
# its numbers check the code paths, they are not measurements. Not applied when
# XLA_FLAGS already sets the level, or when jax was imported before main() ran.
TINY_XLA_FLAG = "--xla_backend_optimization_level=0"


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="benchmarks/suite.py", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Sections: " + ", ".join(SECTIONS))
    d = DEFAULTS
    p.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--tiny", action="store_true",
                   help=f"CI preset (explicit options override it): {TINY}")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--steps", type=int, help=f"steps (batches) per timed run ({d['steps']})")
    p.add_argument("--repeats", type=int, help=f"timed runs, median reported ({d['repeats']})")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help=f"computation dtype of the timed networks ({d['dtype']})")
    g = p.add_argument_group("train_step")
    g.add_argument("--experts", help=f"numbers of experts ({d['experts']})")
    g.add_argument("--batches", help=f"batch sizes ({d['batches']})")
    g.add_argument("--impls", help=f"expert implementations, loop and/or vmap ({d['impls']})")
    g.add_argument("--cpu-convolutions",
                   help="config.cpu_convolutions choices timed side by side, eigen and/or "
                        f"xla_default ({d['cpu_convolutions']}; no effect off the CPU)")
    g = p.add_argument_group("resnet50")
    g.add_argument("--resnet50-batches", help=f"batch sizes ({d['resnet50_batches']})")
    g.add_argument("--resnet50-image", type=int,
                   help=f"image height = width ({d['resnet50_image']})")
    g.add_argument("--resnet50-experts", type=int,
                   help=f"experts ({d['resnet50_experts']}: the recipe's)")
    g.add_argument("--force-resnet50", action=argparse.BooleanOptionalAction,
                   help="run it on a CPU backend too (default: skipped there)")
    g = p.add_argument_group("input")
    g.add_argument("--input-batches", help=f"loader batch sizes ({d['input_batches']})")
    g.add_argument("--input-img-max", type=int,
                   help="head class size of the synthetic 100-class ratio-100 set "
                        f"({d['input_img_max']}: 10,847 images)")
    g = p.add_argument_group("eval")
    g.add_argument("--eval-batch", type=int, help=f"evaluation batch ({d['eval_batch']})")
    g = p.add_argument_group("full_run")
    g.add_argument("--full-run", action=argparse.BooleanOptionalAction,
                   help="run the full training run (hours on a CPU; default: not run)")
    g.add_argument("--full-run-config",
                   help=f"recipe as path:arg ({DEFAULT_FULL_RUN_CONFIG}: 200-epoch RIDE-3)")
    g.add_argument("--full-run-cache", default="",
                   help="a prepared dataset .npz (sets dataset.cache; no TensorFlow needed)")
    g.add_argument("--full-run-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the full run, e.g. steps_per_call=0 or "
                        "model.dtype=bfloat16 (repeatable)")
    g.add_argument("--workdir", default="",
                   help="where the full run writes (a fresh full_run_* folder inside, kept); "
                        "default a temporary folder, removed afterwards")
    return p


# ----------------------------------------------------------------------------- options

def _ints(name: str, text: str, lo: int = 1, hi: int | None = None) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--{name}={text!r}: expected comma-separated integers") from None
    if not values:
        raise UsageError(f"--{name} is empty")
    for v in values:
        if v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise UsageError(f"--{name}: {v} is out of range ({rng})")
    return values


def _sections(name: str, text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in SECTIONS]
    if bad:
        raise UsageError(f"--{name}: unknown section {', '.join(map(repr, bad))}; valid "
                         f"sections are {', '.join(SECTIONS)}")
    return names


def _resolve_path(path: str) -> str:
    """A path as given, else relative to the repository root (configs/...)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    alt = os.path.join(ROOT, path)
    return alt if os.path.exists(alt) else path


def _parse_value(key: str, text: str, old):
    if isinstance(old, bool):
        if text.lower() not in ("true", "false"):
            raise UsageError(f"--full-run-set {key}={text!r}: expected true or false")
        return text.lower() == "true"
    for kind in (int, float):
        if isinstance(old, kind):
            try:
                return kind(text)
            except ValueError:
                raise UsageError(f"--full-run-set {key}={text!r}: expected {kind.__name__} "
                                 f"(the recipe has {old!r})") from None
    return text


def apply_overrides(config, items) -> None:
    """Sets ``KEY=VALUE`` items (dotted keys, values typed as the recipe's) on ``config``;
    UsageError naming the bad item and the valid keys."""
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--full-run-set {item!r}: expected KEY=VALUE")
        *path, last = key.split(".")
        node = config
        for i, name in enumerate(path + [last]):
            if not hasattr(node, "keys") or name not in node:
                where = ".".join(path[:i]) or "the config"
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
                raise UsageError(f"--full-run-set {item!r}: {where} has no key {name!r}; "
                                 f"valid keys: {valid}")
            if i < len(path):
                node = node[name]
        old = node[last]
        if hasattr(old, "keys"):
            raise UsageError(f"--full-run-set {item!r}: {key!r} is a group, not a value")
        node[last] = _parse_value(key, text, old)


def load_full_run_config(spec: str, cache: str, overrides=()):
    """The recipe of ``spec`` (``path[:arg]``) with ``dataset.cache`` set and ``overrides``
    (``KEY=VALUE`` items) applied; UsageError if bad."""
    from ride_jax import configlib
    path, arg = spec, None
    if ".py:" in spec:                       # a relative recipe path is resolved below
        path, arg = spec.split(".py:", 1)
        path += ".py"
    try:
        config = configlib.load(_resolve_path(path), arg)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--full-run-config={spec!r}: {e}") from None
    if cache:
        if not os.path.isfile(cache):
            raise UsageError(f"--full-run-cache={cache!r}: no such file (build one with "
                             "`python -m ride_jax.data.prepare`)")
        config.dataset.cache = os.path.abspath(cache)
    apply_overrides(config, overrides)
    if not cache:               # a missing data path would only show after the other sections
        for key in ("path", "data_dir"):
            value = config.dataset.args.get(key) if hasattr(config.dataset.args, "get") else None
            if value and not os.path.exists(value):
                raise UsageError(f"--full-run-config={spec!r}: dataset {key} {value!r} does "
                                 "not exist; pass --full-run-cache with a prepared .npz")
    return config


def resolve(args: argparse.Namespace) -> dict:
    """The settings every section runs with (defaults < --tiny preset < explicit)."""
    s = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        s[key] = given if given is not None else TINY.get(key, default) if args.tiny else default
    only = _sections("only", args.only) if args.only else list(SECTIONS)
    skip = _sections("skip", args.skip) if args.skip else []
    s["selected"] = [x for x in SECTIONS if x in only and x not in skip]
    s["skipped"] = skip
    if not s["selected"]:
        raise UsageError(f"--only/--skip leave no section to run; valid sections are "
                         f"{', '.join(SECTIONS)}")
    s["experts"] = _ints("experts", s["experts"], 1, 6)
    s["batches"] = _ints("batches", s["batches"])
    s["impls"] = [x.strip() for x in str(s["impls"]).split(",") if x.strip()]
    for impl in s["impls"] or [""]:
        if impl not in ("loop", "vmap"):
            raise UsageError(f"--impls: {impl!r} is not an expert implementation; valid: "
                             "loop, vmap")
    s["cpu_convolutions"] = [x.strip() for x in str(s["cpu_convolutions"]).split(",")
                             if x.strip()]
    for conv in s["cpu_convolutions"] or [""]:   # ride_jax.compiler.CPU_CONVOLUTIONS,
        if conv not in ("eigen", "xla_default"):  # not imported: it imports jax (--tiny)
            raise UsageError(f"--cpu-convolutions: {conv!r} is not a choice; valid: eigen, "
                             "xla_default")
    s["resnet50_batches"] = _ints("resnet50-batches", s["resnet50_batches"])
    s["input_batches"] = _ints("input-batches", s["input_batches"])
    if not 1 <= s["resnet50_experts"] <= 6:
        raise UsageError(f"--resnet50-experts={s['resnet50_experts']} must be in 1..6")
    for name in ("steps", "repeats", "input_img_max", "eval_batch"):
        if s[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')}={s[name]} must be >= 1")
    if s["resnet50_image"] < 32:
        raise UsageError(f"--resnet50-image={s['resnet50_image']} must be >= 32 (the "
                         "network downsamples 32x)")
    s["full_run_cache"] = args.full_run_cache
    s["full_run_set"] = list(args.full_run_set)
    s["workdir"] = args.workdir
    s["tiny"] = args.tiny
    return s


# ------------------------------------------------------------------------------ output

def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}"


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


def memory_report() -> dict:
    """Peak memory of this process so far: device (when the backend says) and host RSS."""
    import jax
    out = {}
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:                       # pragma: no cover - backend specific
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        out["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
        out["device"] = jax.local_devices()[0].device_kind
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_host_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    return out


def print_memory(mem: dict, backend: str) -> None:
    mib = 1 << 20
    if "peak_device_bytes" in mem:
        dev = f"peak device memory {mem['peak_device_bytes'] / mib:,.0f} MiB ({mem['device']})"
    else:
        dev = f"peak device memory: not reported by the {backend} backend"
    print(f"\n{dev}; host peak RSS {mem['peak_host_rss_bytes'] / mib:,.0f} MiB "
          "(process peaks so far)", flush=True)


def _tiny_xla_flag() -> str:
    """Compile at LLVM -O0 for --tiny, when it can still take effect; says what happened."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return f"XLA_FLAGS kept as given ({flags})"
    if "jax" in sys.modules:
        return "XLA optimisation level not changed (jax was imported before the suite)"
    os.environ["XLA_FLAGS"] = (flags + " " + TINY_XLA_FLAG).strip()
    return f"XLA_FLAGS={os.environ['XLA_FLAGS']} (faster compiles, slower code)"


def machine_info(command: str) -> dict:
    import flax
    import jax
    import optax
    dev = jax.devices()[0]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "backend": jax.default_backend(),
            "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "command": command}


def _error_row(row: dict, e: BaseException) -> dict:
    traceback.print_exc()
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return dict(row, status=f"error: {type(e).__name__}: {msg}"[:300])


# ---------------------------------------------------------------------------- sections

def _dtype(s):
    import jax.numpy as jnp
    return None if s["dtype"] == "float32" else jnp.bfloat16


def section_train_step(s: dict) -> dict:
    from train_step import bench_side_by_side
    rows = []
    for batch in s["batches"]:
        for e in s["experts"]:
            for impl in s["impls"]:
                try:
                    rows += [dict(r, status="ok") for r in bench_side_by_side(
                        e, impl, batch, s["steps"], s["repeats"], _dtype(s), host_init=True,
                        cpu_convolutions=s["cpu_convolutions"])]
                except Exception as err:
                    rows += [_error_row({"experts": e, "impl": impl, "batch": batch,
                                         "cpu_convolutions": conv}, err)
                             for conv in s["cpu_convolutions"]]
    print_table(f"train_step: RIDE ResNet-32 (CIFAR-100, reduced experts) train step, "
                f"{s['dtype']}, median of {s['repeats']} x {s['steps']} steps",
                ["E", "impl", "cpu conv", "barriers", "batch", "images/s", "compile s",
                 "status"],
                [[str(r["experts"]), r["impl"], r["cpu_convolutions"],
                  {True: "on", False: "off"}.get(r.get("fusion_barriers"), "-"), str(r["batch"]),
                  _measured(r, "images_per_s"),
                  _measured(r, "compile_s", "{:.2f}"), r["status"]] for r in rows])
    return {"rows": rows}


def _measured(row: dict, key: str, fmt: str | None = None) -> str:
    if key not in row:
        return "-"
    return fmt.format(row[key]) if fmt else _num(row[key])


def section_resnet50(s: dict) -> dict:
    import jax
    backend = jax.default_backend()
    size = s["resnet50_image"]
    rows = []
    if backend == "cpu" and not s["force_resnet50"]:
        rows = [{"batch": b, "image": size, "experts": s["resnet50_experts"],
                 "status": "skipped: GPU only (use --force-resnet50)"}
                for b in s["resnet50_batches"]]
    else:
        from train_step import bench_model

        from ride_jax import losses
        from ride_jax.data import long_tail_counts
        from ride_jax.models import create_model
        # configs/imagenet_lt.py (backbone r50, experts 3, loss ride): reduced experts,
        # cosine heads (s = 30), lambda -0.2, reweight factor 0.02, switch after epoch 80,
        # wd 2e-4 nesterov. Class counts: ImageNet-LT's range (1280 .. 5, exponential).
        counts = long_tail_counts(1000, 1280, ratio=256)
        vec = losses.ride_schedule(counts, epoch=90, reweight_epoch=80, reweight_factor=0.02)
        model = create_model("resnet50", num_classes=1000, num_experts=s["resnet50_experts"],
                             reduce_dimension=True, use_norm=True, scale=30.0,
                             dtype=_dtype(s))
        for b in s["resnet50_batches"]:
            row = {"batch": b, "image": size, "experts": s["resnet50_experts"]}
            try:
                compile_s, rates = bench_model(model, vec, b, s["steps"], s["repeats"],
                                               image_shape=(size, size, 3), num_classes=1000,
                                               diversity_factor=-0.2, weight_decay=2e-4,
                                               host_init=True)
                row.update(compile_s=round(compile_s, 2),
                           images_per_s=round(statistics.median(rates), 1),
                           images_per_s_all=[round(r, 1) for r in rates],
                           status="ok" if backend != "cpu" else "ok (forced on cpu)")
            except Exception as err:
                row = _error_row(row, err)
            rows.append(row)
    print_table(f"resnet50: RIDE ResNet-50 (ImageNet-LT recipe, reduced experts, 1000 "
                f"classes) train step, {s['dtype']}, median of {s['repeats']} x "
                f"{s['steps']} steps",
                ["E", "batch", "image", "images/s", "compile s", "status"],
                [[str(s["resnet50_experts"]), str(r["batch"]), f"{r['image']}x{r['image']}",
                  _measured(r, "images_per_s"),
                  _measured(r, "compile_s", "{:.2f}"), r["status"]] for r in rows])
    return {"rows": rows}


def section_input(s: dict) -> dict:
    from input_pipeline import bench_loader

    from ride_jax.data.synthetic import synthetic_lt
    ds = synthetic_lt(num_classes=100, img_max=s["input_img_max"], ratio=100)
    n = len(ds.train)
    rows = []
    for batch in s["input_batches"]:
        for aug in AUGMENTS:
            row = {"pipeline": f"in-memory {aug}", "augment": aug, "batch": batch,
                   "num_images": n}
            if batch > n:
                rows.append(dict(row, status=f"skipped: batch {batch} > the {n} images"))
                continue
            try:
                rate = bench_loader(ds, batch, aug, s["repeats"])
                row.update(images_per_s=round(rate, 1), status="ok")
            except Exception as err:
                row = _error_row(row, err)
            rows.append(row)
    print_table(f"input: in-memory device loader, {n:,} synthetic images 32x32x3, whole "
                f"epochs, median of {s['repeats']}",
                ["pipeline", "batch", "images/s", "status"],
                [[r["pipeline"], str(r["batch"]), _measured(r, "images_per_s"), r["status"]]
                 for r in rows])
    return {"rows": rows}


def section_eval(s: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from train_step import host_variables, trainer_barriers

    from ride_jax.models import create_model
    batch = s["eval_batch"]
    barriers = trainer_barriers()       # as the trainer's eval step (CPU: on)
    row = {"model": "RIDE ResNet-32 E=3", "experts": 3, "batch": batch,
           "fusion_barriers": barriers}
    try:
        model = create_model("resnet32", num_classes=100, num_experts=3, dtype=_dtype(s),
                             fusion_barriers=barriers)
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.standard_normal((batch, 32, 32, 3), dtype=np.float32))
        variables = host_variables(model, images)
        from ride_jax.compiler import compiler_options      # as the trainer's eval step
        fwd = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"],
                      compiler_options=compiler_options(s["cpu_convolutions"][0]))
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(variables, images))
        compile_s = time.perf_counter() - t0
        rates = []
        for _ in range(s["repeats"]):
            t0 = time.perf_counter()
            for _ in range(s["steps"]):
                out = fwd(variables, images)
            jax.block_until_ready(out)
            rates.append(s["steps"] * batch / (time.perf_counter() - t0))
        if not bool(jnp.all(jnp.isfinite(out))):
            raise FloatingPointError("non-finite logits")
        row.update(compile_s=round(compile_s, 2), images_per_s=round(statistics.median(rates), 1),
                   images_per_s_all=[round(r, 1) for r in rates], status="ok")
    except Exception as err:
        row = _error_row(row, err)
    rows = [row]
    print_table(f"eval: jitted evaluation forward (train=False), CIFAR-100 32x32, "
                f"{s['dtype']}, median of {s['repeats']} x {s['steps']} batches",
                ["model", "batch", "images/s", "compile s", "status"],
                [[r["model"], str(r["batch"]), _measured(r, "images_per_s"),
                  _measured(r, "compile_s", "{:.2f}"), r["status"]] for r in rows])
    return {"rows": rows}


def section_full_run(s: dict, config) -> dict:
    from ride_jax.train import build_dataset, train_and_evaluate
    spec = s["full_run_config"]
    if s["workdir"]:
        os.makedirs(s["workdir"], exist_ok=True)
        workdir, keep = tempfile.mkdtemp(prefix="full_run_", dir=s["workdir"]), True
    else:
        workdir, keep = tempfile.mkdtemp(prefix="ride_jax_full_run_"), False
    row = {"config": spec, "cache": config.dataset.cache or "", "epochs": int(config.epochs),
           "batch": int(config.data.batch_size), "experts": int(config.model.num_experts),
           "eval_every_epochs": int(config.eval_every_epochs),
           "overrides": list(s["full_run_set"]),
           "steps_per_call": int(config.get("steps_per_call", 1)),
           "workdir": workdir if keep else ""}
    print(f"\n# full_run: {spec} ({row['epochs']} epochs) in {workdir}", flush=True)
    try:
        t0 = time.perf_counter()
        ds = build_dataset(config)
        data_s = time.perf_counter() - t0
        result = train_and_evaluate(config, workdir, dataset=ds)
        wall = time.perf_counter() - t0
        n, batch = int(ds.train_counts.sum()), int(config.data.batch_size)
        full, rest = divmod(n, batch)           # the loader's epoch (one process)
        partial = config.data.remainder == "partial" and rest > 0
        per_epoch, spe = (n, full + 1) if partial else (full * batch, full)
        done, extra = divmod(int(result["step"]), spe)
        trained = done * per_epoch + extra * batch     # images the train steps saw
        evals = len([f for f in os.listdir(os.path.join(workdir, "eval"))
                     if f.endswith(".json")])
        last = result.get("last") or {}
        row.update(status=result["status"], wall_s=round(wall, 2), data_s=round(data_s, 2),
                   steps=int(result["step"]), train_images=n, evaluations=evals,
                   train_images_per_s=round(trained / wall, 1))
        if "accuracy" in last:
            row["top1"] = float(last["accuracy"])
    except Exception as err:
        row = _error_row(row, err)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = [row]
    print_table("full_run: train_and_evaluate wall time (data loading, compilation, training "
                "and every evaluation)",
                ["config", "epochs", "evaluations", "wall s", "train images/s",
                 "final top-1 %", "status"],
                [[f"`{r['config']}`", str(r["epochs"]), str(r.get("evaluations", "-")),
                  _measured(r, "wall_s", "{:,.1f}"), _measured(r, "train_images_per_s"),
                  f"{100 * r['top1']:.2f}" if "top1" in r else "-",
                  r["status"]] for r in rows])
    return {"rows": rows}


# -------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    """Runs the suite; returns ``{'machine', 'settings', 'sections'}`` (also the JSON).

    Raises UsageError for a bad command line (the command-line entry point prints it in
    one line and exits with status 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    s = resolve(args)
    if s["tiny"]:                            # before anything imports jax
        s["tiny_xla_flag"] = _tiny_xla_flag()
    full_config = None
    if "full_run" in s["selected"] and s["full_run"]:
        full_config = load_full_run_config(s["full_run_config"], s["full_run_cache"],
                                           s["full_run_set"])
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(d):
            raise UsageError(f"--json={args.json!r}: folder {d!r} does not exist")

    command = shlex.join(["python", "benchmarks/suite.py", *argv])
    machine = machine_info(command)
    backend = machine["backend"]
    print(f"# ride_jax benchmark suite, {machine['date']}")
    print(f"# {machine['device_kind']} x{machine['device_count']} ({backend}), jax "
          f"{machine['jax']}, flax {machine['flax']}, optax {machine['optax']}, python "
          f"{machine['python']}, {machine['cpu_count']} CPUs")
    print(f"# {command}", flush=True)
    if s["tiny"]:
        print(f"# --tiny: {s['tiny_xla_flag']}; the numbers check the code paths, they are "
              "not measurements", flush=True)

    runners = {"train_step": section_train_step, "resnet50": section_resnet50,
               "input": section_input, "eval": section_eval,
               "full_run": lambda s: section_full_run(s, full_config)}
    sections = {}
    for name in SECTIONS:
        if name not in s["selected"]:
            why = "skipped (--skip)" if name in s["skipped"] else "not selected (--only)"
            sections[name] = {"status": why, "rows": []}
            print(f"\n## {name}: {why}")
            continue
        if name == "full_run" and not s["full_run"]:
            sections[name] = {"status": "not run (pass --full-run)", "rows": []}
            print("\n## full_run: not run (pass --full-run)")
            continue
        t0 = time.perf_counter()
        out = runners[name](s)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        out["memory"] = memory_report()
        ok = not any(r["status"].startswith("error") for r in out["rows"])
        out["status"] = "ran" if ok else "ran with errors"
        print_memory(out["memory"], backend)
        sections[name] = out
    result = {"machine": machine, "settings": s, "sections": sections}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\n# wrote {args.json}")
    return result


def _cli() -> int:
    try:
        result = main()
    except UsageError as e:
        print(f"benchmarks/suite.py: error: {e}", file=sys.stderr)
        return 2
    failed = [f"{name}: {r['status']}" for name, sec in result["sections"].items()
              for r in sec["rows"] if r["status"].startswith("error")]
    if failed:
        print(f"benchmarks/suite.py: {len(failed)} row(s) failed: " + "; ".join(failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ride_jax.allocator import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    sys.exit(_cli())
