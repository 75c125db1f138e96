"""``python -m ride_jax.analysis run --workdir=DIR [--out=DIR]``: figures of a finished run.

Writes ``accuracy_vs_count.png``, ``hardest_negatives.png``, ``confusion.png`` (few
classes), ``expert_usage.png`` (routed runs) and ``analysis.json`` into
``DIR/analysis`` (or ``--out``) and prints the per-group summary.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ride_jax.analysis",
                                     description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="figures and a summary of a finished run")
    run.add_argument("--workdir", required=True, help="the run's workdir")
    run.add_argument("--out", default=None, help="output folder (default WORKDIR/analysis)")
    shift = sub.add_parser("shift", help="accuracy of a finished run on the eleven shifted "
                           "test distributions (forward 50 ... uniform ... backward 50; "
                           "iNat: forward 3 ... backward 3)")
    what = shift.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="the run's workdir: shift.json and shift.png go into "
                      "RUN/analysis (or --out)")
    what.add_argument("--compare", nargs="+", metavar="DIR",
                      help="several runs' workdirs: one shift.png in --out overlays them")
    shift.add_argument("--which", default="latest",
                       help="checkpoint: latest (default), best or a step number")
    shift.add_argument("--names", nargs="+", default=None, help="--compare: run names")
    tta = shift.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None,
                     help="test-time self-supervised aggregation of the experts (SADE) per "
                     "distribution, for any multi-expert run (SADE runs: by default)")
    tta.add_argument("--no-tta", dest="tta", action="store_false",
                     help="no test-time aggregation, not even for a SADE run")
    shift.add_argument("--out", default=None, help="output folder (default RUN/analysis; "
                       "--compare: the current folder)")
    shift.add_argument("--image-root", dest="image_root", default=None, metavar="DIR",
                       help="imagenet_lt / places_lt / inat2018 runs: the folder holding "
                       "the test list's paths (e.g. DIR/val/n01440764/ILSVRC2012_val_"
                       "00000293.JPEG; default: the run config's dataset.args.image_root)")
    seeds = sub.add_parser("seeds", help="N seeds of a recipe (resumable): mean +- std of "
                           "every metric; --compare tabulates several seeds folders")
    seeds.add_argument("--config", default=None, help="recipe, configs/X.py[:args]; "
                       "--config.KEY=VALUE overrides follow")
    seeds.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    seeds.add_argument("--workdir", default=None, help="folder of the seed_KK runs")
    seeds.add_argument("--shift", action="store_true",
                       help="also mean +- std per shifted test distribution")
    seeds.add_argument("--compare", nargs="+", metavar="DIR", help="finished seeds folders")
    seeds.add_argument("--out", default=None, help="--compare: output folder (default .)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "seeds":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "seeds":
        from ride_jax.analysis.seeds import command as seeds_command
        return seeds_command(args, extra)
    if args.command == "shift":
        from ride_jax.analysis.shift import command
        return command(args)
    from ride_jax.analysis.runs import analyze_run
    try:
        summary = analyze_run(args.workdir, args.out)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = summary.pop("files")
    short = {k: summary[k] for k in ("accuracy", "groups", "hardest_negative_mean",
                                     "mean_experts", "ece") if k in summary}
    print(json.dumps(short, indent=1))
    print("wrote " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
