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
    args = parser.parse_args(argv)
    from ride_jax.analysis.runs import analyze_run
    try:
        summary = analyze_run(args.workdir, args.out)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = summary.pop("files")
    short = {k: summary[k] for k in ("accuracy", "groups", "hardest_negative_mean",
                                     "mean_experts")}
    print(json.dumps(short, indent=1))
    print("wrote " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
