"""ride_jax's RIDE train step against the official PyTorch one, measured side by side.

    python benchmarks/vs_pytorch.py                                # torch in this Python
    python benchmarks/vs_pytorch.py --torch-python /venvs/torch/bin/python --experts 2,3,4
    python benchmarks/vs_pytorch.py --check                        # the reference is official

Both sides run the same step on fixed random CIFAR images already in memory: RIDE
ResNet-32 (CIFAR-100, reduced experts) in train mode, the RIDE loss of the CIFAR-100-LT
recipe after the DRW switch, backward, nesterov SGD with weight decay 5e-4, batch 128,
float32. ride_jax's side is ``benchmarks/train_step.py``'s step compiled as the trainer
compiles it on this backend; PyTorch's is ``benchmarks/official_torch.py``, the official
model, loss and optimizer (checked against numbers made by the official code), in NCHW
as the official code runs (``--channels-last`` adds PyTorch's NHWC layout as a third
side).

Each side runs in its own process (one framework's thread pool never competes with the
other's), and the processes alternate, round after round (A B A B ...), so a noisy
machine slows both alike. Per side: build and compile, one warm-up step, then
``--repeats`` timed runs of ``--steps`` steps. The table gives the median images/s over
all timed runs of a side and the median of the per-round ratios.

On a GPU machine both sides run on the GPU (``--torch-device auto``: CUDA when torch
sees it; ride_jax uses JAX's default backend). Not yet run on a GPU.

Torch is not a ride_jax dependency: install a CPU build of it into this environment or
another one and point ``--torch-python`` at that interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIDES = ("ride_jax", "torch", "torch_channels_last")


def _worker(side: str, experts: int, batch: int, steps: int, repeats: int,
            torch_device: str = "auto") -> dict:
    """Runs in the side's own process: {"setup_s", "rates", "versions"}."""
    t0 = time.perf_counter()
    sys.path.insert(0, HERE)
    if side == "ride_jax":
        import jax
        import train_step as ts
        model, vec = ts._ride32(experts, "loop", fusion_barriers=ts.trainer_barriers())
        _, run = ts.prepare_model(model, vec, batch, host_init=True)
        versions = {"jax": jax.__version__, "backend": jax.default_backend()}
    else:
        import torch
        import official_torch
        # 'cuda' without a GPU was refused by the driver (_torch_python) before any side ran.
        device = torch_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        run = official_torch.make_train_step(experts, batch,
                                             channels_last=side == "torch_channels_last",
                                             device=device)
        run(1)
        versions = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": device}
    setup_s = time.perf_counter() - t0
    return {"setup_s": setup_s, "rates": [run(steps) for _ in range(repeats)],
            "versions": versions}


def _run_side(python: str, side: str, experts: int, batch: int, steps: int, repeats: int,
              timeout: float, torch_device: str = "auto") -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--experts", str(experts),
           "--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats),
           "--torch-device", torch_device]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the {side} side (E={experts}, {python}) failed: "
                           + " | ".join(tail))
    return json.loads(lines[-1])


def compare(experts: int, *, torch_python: str, batch: int = 128, steps: int = 5,
            repeats: int = 3, rounds: int = 3, channels_last: bool = False,
            timeout: float = 1800, torch_device: str = "auto") -> dict:
    """The alternated processes for one E: medians, per-round ratios, every timed run."""
    sides = SIDES if channels_last else SIDES[:2]
    pythons = {"ride_jax": sys.executable, "torch": torch_python,
               "torch_channels_last": torch_python}
    runs = {s: [] for s in sides}
    for _ in range(rounds):
        for side in sides:
            runs[side].append(_run_side(pythons[side], side, experts, batch, steps, repeats,
                                        timeout, torch_device))
    med = {s: statistics.median(r for run in runs[s] for r in run["rates"]) for s in sides}
    ratios = {s: statistics.median(statistics.median(a["rates"]) / statistics.median(b["rates"])
                                   for a, b in zip(runs["ride_jax"], runs[s]))
              for s in sides if s != "ride_jax"}
    return {"experts": experts, "batch": batch, "images_per_s": med,
            "ride_jax_over": ratios,
            "runs": {s: [{"setup_s": round(r["setup_s"], 1),
                          "rates": [round(x, 1) for x in r["rates"]]} for r in runs[s]]
                     for s in sides},
            "versions": {s: runs[s][0]["versions"] for s in sides}}


def _torch_python(given: str | None, device: str = "auto") -> str:
    python = given or sys.executable
    where = f"--torch-python {given}" if given else f"this Python ({sys.executable})"
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"vs_pytorch.py: torch cannot be imported by {where}; install a CPU "
                         "build of torch there (pip install torch), or name an interpreter "
                         "that has it with --torch-python")
    if device == "cuda" and probe.stdout.strip() != "True":
        raise SystemExit(f"vs_pytorch.py: --torch-device cuda, but the torch of {where} sees "
                         "no CUDA device; use --torch-device cpu or auto")
    return python


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="3", help="comma list of E (default 3)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=3, help="alternated processes per side")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time PyTorch in NHWC (channels_last)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch installed (default: this one)")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where PyTorch runs (auto: cuda when torch sees a GPU, as "
                             "ride_jax then runs on it too)")
    parser.add_argument("--check", action="store_true",
                        help="only check the PyTorch reference against the official numbers")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        experts = [int(x) for x in args.experts.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--experts: {args.experts!r} is not a comma list of integers 1..8")
    for name, value, low in (("--experts", min(experts, default=0), 1),
                             ("--batch", args.batch, 1), ("--steps", args.steps, 1),
                             ("--repeats", args.repeats, 1), ("--rounds", args.rounds, 1)):
        if value < low:
            parser.error(f"{name}: {value} is below {low}")

    if args.worker:
        print(json.dumps(_worker(args.worker, experts[0], args.batch, args.steps,
                                 args.repeats, args.torch_device)))
        return

    python = _torch_python(args.torch_python, args.torch_device)
    if args.check:
        proc = subprocess.run([python, os.path.join(HERE, "official_torch.py")], text=True)
        sys.exit(proc.returncode)

    sides = SIDES if args.channels_last else SIDES[:2]
    print(f"# RIDE ResNet-32 CIFAR-100 train step, batch {args.batch}, float32; "
          f"{args.rounds} alternated processes per side, {args.repeats} x {args.steps} "
          f"steps each; python {platform.python_version()}, {os.cpu_count()} CPUs")
    print("| E | " + " | ".join(f"{s} img/s" for s in sides) + " | "
          + " | ".join(f"ride_jax / {s}" for s in sides[1:]) + " |")
    print("|---" * (2 * len(sides)) + "|")
    results = []
    for e in experts:
        try:
            res = compare(e, torch_python=python, batch=args.batch, steps=args.steps,
                          repeats=args.repeats, rounds=args.rounds,
                          channels_last=args.channels_last, torch_device=args.torch_device)
        except RuntimeError as err:     # a side's process failed: its last lines say why
            raise SystemExit(f"vs_pytorch.py: {err}") from None
        results.append(res)
        print(f"| {e} | " + " | ".join(f"{res['images_per_s'][s]:.1f}" for s in sides)
              + " | " + " | ".join(f"{res['ride_jax_over'][s]:.2f}" for s in sides[1:])
              + " |", flush=True)
    for res in results:
        print(f"# E={res['experts']} versions {res['versions']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "command": sys.argv,
                       "cpu_count": os.cpu_count(), "results": results}, f, indent=1)


if __name__ == "__main__":
    if "--worker" in sys.argv and "ride_jax" in sys.argv:
        from ride_jax.allocator import reexec_with_hugepage_malloc
        reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    main()
