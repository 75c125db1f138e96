"""Whole-epoch images/s of the grain file pipeline by reader threads and worker processes.

    python benchmarks/grain_threads.py                # 384 JPEGs, batch 32, median of 3
    python benchmarks/grain_threads.py --images 1024 --settings 0:2,0:16,2:1

Writes ``--images`` synthetic 500x375 JPEGs (quality 90) to a temporary folder, then
for each ``workers:threads`` setting times one whole epoch through
``ride_jax.data.grain_pipeline.make_train_iter`` with the official ImageNet-LT train
transform, from iterator creation to the last batch (start-up included: what a short
epoch costs). Prints images/s and images/s per core (BENCHMARKS.md, "grain reader
threads").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settings", default="0:16,0:4,0:2,2:1,2:2",
                   help="comma-separated workers:threads")
    a = p.parse_args(argv)
    try:
        settings = [tuple(int(x) for x in s.split(":")) for s in a.settings.split(",")]
        assert all(len(s) == 2 and s[0] >= 0 and s[1] >= 1 for s in settings)
    except (ValueError, AssertionError):
        p.error(f"--settings={a.settings!r}: expected workers:threads pairs, e.g. 0:2,2:1")
    if a.images < 1 or a.batch < 1 or a.repeats < 1:
        p.error("--images, --batch and --repeats must be >= 1")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import grain
    from PIL import Image
    from ride_jax.data import grain_pipeline as gp

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(a.images):
            pixels = (rng.integers(0, 255, (375, 500, 3), dtype=np.uint8) // 32 * 32)
            paths.append(os.path.join(root, f"{i:05d}.jpg"))
            Image.fromarray(pixels.astype(np.uint8)).save(paths[-1], quality=90)
        src = gp.FileSource(paths, np.zeros(a.images, int),
                            transform_train=gp.official_train_transform(224))

        def epoch(workers, threads):
            t0 = time.perf_counter()
            it = gp.make_train_iter(src, batch_size=a.batch, seed=0, epoch=0,
                                    worker_count=workers,
                                    read_options=grain.ReadOptions(num_threads=threads))
            n = sum(len(b["label"]) for b in it)
            elapsed = time.perf_counter() - t0
            getattr(it, "close", lambda: None)()
            return n / elapsed

        print(f"{a.images} images, batch {a.batch}, {cores} cores, median of {a.repeats}")
        print("| worker processes | reader threads | images/s | per core |")
        print("| ---: | ---: | ---: | ---: |")
        for workers, threads in settings:
            rate = statistics.median(epoch(workers, threads) for _ in range(a.repeats))
            print(f"| {workers} | {threads} | {rate:.0f} | {rate / cores:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
