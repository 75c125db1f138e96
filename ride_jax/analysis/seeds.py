"""Seed variance of a recipe: N runs differing only in ``config.seed``.

    python -m ride_jax.analysis seeds --config=configs/cifar100_lt.py:loss=ride \\
        --seeds 5 --workdir runs/ride_seeds [--config.KEY=VALUE ...] [--shift]
    python -m ride_jax.analysis seeds --compare runs/ce_seeds runs/ride_seeds [--out DIR]

Member ``k`` trains the recipe with ``config.seed = k`` (everything else equal) in
``<workdir>/seed_KK`` through :func:`ride_jax.train.train_and_evaluate`, which resumes a
partial member and leaves a finished one as it is (like the bias/variance study,
:mod:`ride_jax.analysis.study`). Then ``<workdir>/seeds.json`` holds, for every scalar
metric of the members' ``results.json`` ``last`` evaluation
(:data:`ride_jax.evaluation.SCALARS` that are present and not ``None``),
``{'mean', 'std', 'values'}``; ``std`` is the SAMPLE standard deviation (``ddof=1``;
0 for a single seed). With ``--shift`` each member is also evaluated on the eleven test
class distributions (:func:`ride_jax.analysis.shift.evaluate_shift`, reusing a member's
``analysis/shift.json`` computed from its latest checkpoint) and ``seeds.json['shift']``
holds per distribution the same statistics of ``accuracy`` and ``prior_corrected``
accuracy.

``--compare`` reads finished seeds folders and prints one row per folder: the method
(the members' ``loss.name``) and mean +- std of accuracy, many, medium and few; the rows
are written to ``seeds_compare.json`` in ``--out`` (default: the current folder).

Bad input is one ``error:`` line, exit status 2, and nothing written (the config and
overrides are checked before anything trains).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import numpy as np

SEEDS_FILE = "seeds.json"
COMPARE_FILE = "seeds_compare.json"
COMPARE_METRICS = ("accuracy", "many", "medium", "few")
# What a bad input raises (as the study and the shift command report them).
USER_ERRORS = (ValueError, FileNotFoundError, TypeError, KeyError)


def member_dir(workdir: str | os.PathLike, k: int) -> str:
    return os.path.join(os.fspath(workdir), f"seed_{int(k):02d}")


def seed_config(config, k: int):
    """``config`` with ``seed = k`` (a copy; everything else equal)."""
    import ml_collections
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = int(k)
    return c


def stats(values: Sequence[float]) -> dict[str, Any]:
    """``{'mean', 'std' (sample, ddof=1; 0.0 for one value), 'values'}``."""
    v = np.asarray([float(x) for x in values], np.float64)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "values": v.tolist()}


def _metrics(last: dict) -> dict[str, float]:
    from ride_jax.evaluation import SCALARS
    return {k: float(last[k]) for k in SCALARS
            if isinstance(last.get(k), (int, float)) and not isinstance(last.get(k), bool)}


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path!r} does not exist: {what}") from None
    except ValueError:
        raise ValueError(f"{path!r} is not valid JSON") from None


def summarize_members(run_dirs: Sequence[str]) -> dict[str, Any]:
    """Mean +- std of each ``results.json`` ``last`` scalar over finished runs."""
    per_run = []
    for d in run_dirs:
        last = _read_json(os.path.join(d, "results.json"), "the run did not finish").get("last")
        if not last:
            raise ValueError(f"{d!r} has no final evaluation in results.json")
        per_run.append(_metrics(last))
    keys = [k for k in per_run[0] if all(k in m for m in per_run)]
    return {k: stats([m[k] for m in per_run]) for k in keys}


def summarize_shift(shift_results: Sequence[dict]) -> dict[str, Any]:
    """Per distribution: stats of ``accuracy``, ``prior_corrected`` accuracy and, when
    every member ran test-time aggregation, ``tta`` accuracy (else None)."""
    from ride_jax.data.long_tail import SHIFTS
    out = {}
    for s in SHIFTS:
        entries = [r["distributions"][s] for r in shift_results]
        pc = [(e.get("prior_corrected") or {}).get("accuracy") for e in entries]
        tta = [(e.get("tta") or {}).get("accuracy") for e in entries]
        out[s] = {"accuracy": stats([e["accuracy"] for e in entries]),
                  "prior_corrected": None if any(v is None for v in pc) else stats(pc),
                  "tta": None if any(v is None for v in tta) else stats(tta)}
    return out


def _member_shift(run_dir: str) -> dict:
    from ride_jax.analysis import shift
    saved = shift._saved_result(run_dir, "latest")       # reuse analysis/shift.json
    if saved is not None:
        return saved
    r = shift.evaluate_shift(run_dir, "latest")
    r.pop("files")
    return r


def run_seeds(config, workdir: str | os.PathLike, seeds: int, *,
              with_shift: bool = False, log=print) -> dict[str, Any]:
    """Train (or resume) ``seeds`` members and write ``seeds.json``; returns its content."""
    from ride_jax import config_checks
    from ride_jax.train import train_and_evaluate
    if int(seeds) < 1:
        raise ValueError(f"--seeds={seeds}: give at least 1 seed")
    if with_shift:
        from ride_jax.analysis.shift import _refuse_streamed
        _refuse_streamed(config.dataset.name)
    config_checks.check_config(config)                  # before anything is written
    workdir = os.fspath(workdir)
    dirs = []
    for k in range(int(seeds)):
        d = member_dir(workdir, k)
        before = os.path.exists(os.path.join(d, "results.json"))
        out = train_and_evaluate(seed_config(config, k), d)
        if out["status"] != "finished":
            raise ValueError(f"seed {k} ({d}) stopped: {out['status']}; run the command "
                             "again to resume it")
        log(f"seed {k}: {'already finished' if before else 'finished'} ({d})")
        dirs.append(d)
    result = {"config": json.loads(config.to_json()), "method": config.loss.name,
              "seeds": int(seeds), "std": "sample (ddof=1)", "members": dirs,
              "metrics": summarize_members(dirs)}
    if with_shift:
        result["shift"] = summarize_shift([_member_shift(d) for d in dirs])
    with open(os.path.join(workdir, SEEDS_FILE), "w") as f:
        json.dump(result, f, indent=1)
    return result


def compare_seeds(seed_dirs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per finished seeds folder: ``{'folder', 'method', 'seeds', metric: stats}``."""
    if not seed_dirs:
        raise ValueError("--compare needs at least one seeds folder")
    rows = []
    for d in seed_dirs:
        saved = _read_json(os.path.join(d, SEEDS_FILE), "run `seeds --workdir` there first")
        members = saved.get("members") if isinstance(saved, dict) else None
        if not members:
            raise ValueError(f"{os.path.join(d, SEEDS_FILE)!r} is not a seeds.json")
        methods = {_read_json(os.path.join(m, "config.json"), "a member is missing")
                   ["loss"]["name"] for m in members}
        metrics = saved["metrics"]
        rows.append({"folder": os.fspath(d), "method": "/".join(sorted(methods)),
                     "seeds": len(members),
                     **{k: metrics.get(k) for k in COMPARE_METRICS}})
    return rows


def _pm(s: dict | None) -> str:
    return "-" if s is None else f"{s['mean']:.4f} +- {s['std']:.4f}"


def format_seeds(result: dict) -> str:
    lines = [f"{result['method']}: {result['seeds']} seed(s), std = {result['std']}",
             f"  {'metric':<20} {'mean +- std':>18}"]
    lines += [f"  {k:<20} {_pm(s):>18}" for k, s in result["metrics"].items()]
    if "shift" in result:
        tta = all(e.get("tta") for e in result["shift"].values())
        lines.append(f"  {'distribution':<14} {'top1':>18} {'prior-corrected':>18}"
                     + (f" {'test-time agg.':>18}" if tta else ""))
        for name, e in result["shift"].items():
            lines.append(f"  {name:<14} {_pm(e['accuracy']):>18} "
                         f"{_pm(e['prior_corrected']):>18}"
                         + (f" {_pm(e['tta']):>18}" if tta else ""))
    return "\n".join(lines)


def format_compare(rows: list[dict]) -> str:
    lines = ["| folder | method | seeds | " + " | ".join(COMPARE_METRICS) + " |",
             "| --- | --- | ---: |" + " ---: |" * len(COMPARE_METRICS)]
    for r in rows:
        lines.append(f"| {r['folder']} | {r['method']} | {r['seeds']} | "
                     + " | ".join(_pm(r[k]) for k in COMPARE_METRICS) + " |")
    return "\n".join(lines)


def load_config(spec: str, overrides: Sequence[str]):
    """The recipe ``spec`` (``path[:args]``) with ``--config.KEY=VALUE`` overrides, parsed
    by ml_collections' config flag (what ``ride_jax.main`` and the study use)."""
    from absl import flags
    from ml_collections import config_flags

    from ride_jax import config_checks, configlib
    try:
        base = configlib.load(spec)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise ValueError(f"--config={spec}: {e}") from None
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unexpected argument {item!r} (overrides are "
                             "--config.KEY=VALUE)")
        key = item[len("--config."):].partition("=")[0]
        node, ok = base, True
        for part in key.split("."):
            try:
                ok = part in node
            except TypeError:
                ok = False
            if not ok:
                break
            node = node[part]
        if not ok and not key.startswith("dataset.args."):
            raise ValueError(config_checks.unknown_key(key))
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "recipe", flag_values=fv,
                                    lock_config=True)
    try:
        fv(["seeds", f"--config={spec}", *overrides])
    except flags.Error as e:
        raise ValueError(str(e).strip().splitlines()[0]) from None
    return fv.config


def command(args: Any, extra: Sequence[str] = ()) -> int:
    """Run the ``seeds`` subcommand; ``error:`` line and 2 on bad input."""
    try:
        if args.compare:
            if args.config or args.workdir or extra or args.shift:
                raise ValueError("--compare takes only seeds folders (and --out)")
            rows = compare_seeds(args.compare)
            out_dir = args.out or "."
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, COMPARE_FILE)
            with open(path, "w") as f:
                json.dump(rows, f, indent=1)
            print(format_compare(rows))
            print(f"wrote {path}")
            return 0
        if not args.config or not args.workdir:
            raise ValueError("give --config and --workdir (train seeds) or --compare")
        if args.out:
            raise ValueError("--out goes with --compare (seeds.json goes into --workdir)")
        config = load_config(args.config, extra)
        result = run_seeds(config, args.workdir, args.seeds, with_shift=args.shift)
    except USER_ERRORS as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(format_seeds(result))
    print(f"wrote {os.path.join(args.workdir, SEEDS_FILE)}")
    return 0
