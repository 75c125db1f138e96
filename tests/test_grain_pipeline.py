"""The grain input pipeline (ride_jax/data/grain_pipeline.py): epoch orders equal to the
in-memory loader's, process parts, resuming without reading the skipped steps, grain
iterator checkpoints, per-example augmentation seeds, and padded evaluation."""

import collections
import pathlib
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from ride_jax.data.grain_pipeline import (FileSource, epoch_steps, make_eval_iter,
                                          make_train_iter, reader_options)
from ride_jax.data.loader import balanced_indices, shuffle_indices

# 40 images, a long-tailed class profile.
COUNTS = [16, 10, 6, 4, 2, 2]
NUM_CLASSES = len(COUNTS)
N = sum(COUNTS)
SEED = 3
ROOT = pathlib.Path(__file__).resolve().parents[1]


def resize8(img):
    """The evaluation transform of the tests: 8x8 nearest-neighbour."""
    return np.asarray(img.convert("RGB").resize((8, 8), Image.NEAREST), np.uint8)


def stamp_train(img, rng):
    """The training transform of the tests: 8x8, flipped when the generator's first draw
    is odd, pixel [0, 0] overwritten with the generator's first three draws."""
    draws = rng.integers(0, 256, 3)
    out = resize8(img)
    if draws[0] % 2:
        out = out[:, ::-1]
    out = out.copy()
    out[0, 0] = draws
    return out


class CountingSource(FileSource):
    """A FileSource counting the decodes of every example (in this process)."""
    decoded = collections.Counter()
    _count_lock = threading.Lock()

    def image(self, index):
        with CountingSource._count_lock:
            CountingSource.decoded[int(index)] += 1
        return super().image(index)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(paths, labels, originals): 40 PNG/JPEG files of varied sizes; the PNGs hold
    exact pixels, each image has its example's number in the red channel."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(NUM_CLASSES), COUNTS)
    rng.shuffle(labels)
    paths, originals = [], []
    for i in range(N):
        h, w = 10 + i % 5, 12 + i % 3
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[..., 0] = i
        ext = "png" if i % 4 else "jpg"
        path = d / f"c{labels[i]}" / f"img{i:02d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
        originals.append(np.asarray(Image.open(path).convert("RGB")))
    return paths, labels, originals


def source_of(files, cls=FileSource):
    paths, labels, _ = files
    return cls(paths, labels, transform_train=stamp_train, transform_eval=resize8)


def take(it, k=None):
    out = []
    for batch in it:
        out.append(batch)
        if k is not None and len(out) == k:
            break
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_epoch_steps():
    assert epoch_steps(40, 16, "partial") == [16, 16, 8]
    assert epoch_steps(40, 16, "drop") == [16, 16]
    assert epoch_steps(40, 8, "partial") == [8] * 5
    assert epoch_steps(40, 12, "partial", multiple=3) == [12, 12, 12, 3]
    assert epoch_steps(40, 12, "partial", multiple=8) == [12, 12, 12]
    assert epoch_steps(5, 8, "partial") == [5]
    assert epoch_steps(5, 8, "drop") == []


@pytest.mark.parametrize("sampler", ["shuffle", "balanced"])
@pytest.mark.parametrize("remainder", ["partial", "drop"])
def test_epoch_indices_are_the_loader_order(files, sampler, remainder):
    paths, labels, originals = files
    src = source_of(files)
    epoch = 2
    if sampler == "shuffle":
        order = shuffle_indices(N, SEED, epoch)
    else:
        order = balanced_indices(labels, NUM_CLASSES, SEED, epoch)
    cuts = [(0, 12), (12, 24), (24, 36)] + ([(36, 40)] if remainder == "partial" else [])
    batches = take(make_train_iter(src, batch_size=12, seed=SEED, epoch=epoch, sampler=sampler,
                                   num_classes=NUM_CLASSES, remainder=remainder))
    assert len(batches) == len(cuts)
    for batch, (lo, hi) in zip(batches, cuts):
        np.testing.assert_array_equal(batch["index"], order[lo:hi])
        assert batch["index"].dtype == np.int64
        assert batch["label"].dtype == np.int32
        np.testing.assert_array_equal(batch["label"], labels[order[lo:hi]])
        assert batch["image"].shape == (hi - lo, 8, 8, 3) and batch["image"].dtype == np.uint8
        # The red channel carries the example number (exact in the PNGs).
        for row, i in zip(batch["image"], batch["index"]):
            if i % 4:
                assert set(np.unique(row[1:, :, 0])) == {i}
    if sampler == "balanced":       # draws with replacement: the tail classes come back
        counts = np.bincount(labels[np.concatenate([b["index"] for b in batches])],
                             minlength=NUM_CLASSES)
        assert counts[-1] > COUNTS[-1]


@pytest.mark.parametrize("process_count,multiple,sizes", [
    (2, 1, [12, 12, 12, 4]), (3, 1, [12, 12, 12, 3]), (4, 1, [12, 12, 12, 4]),
    (2, 4, [12, 12, 12, 4]), (2, 6, [12, 12, 12])])
def test_process_parts_make_the_global_batch(files, process_count, multiple, sizes):
    src = source_of(files)
    order = shuffle_indices(N, SEED, 0)
    whole = take(make_train_iter(src, batch_size=12, seed=SEED, epoch=0))
    parts = [take(make_train_iter(src, batch_size=12, seed=SEED, epoch=0,
                                  process_index=p, process_count=process_count,
                                  multiple=multiple))
             for p in range(process_count)]
    assert [len(p) for p in parts] == [len(sizes)] * process_count
    start = 0
    for step, size in enumerate(sizes):
        for p in range(process_count):
            assert len(parts[p][step]["index"]) == size // process_count
        joined = {k: np.concatenate([parts[p][step][k] for p in range(process_count)])
                  for k in whole[0]}
        np.testing.assert_array_equal(joined["index"], order[start:start + size])
        # The same examples with the same augmentations as the single-process epoch.
        for key in joined:
            np.testing.assert_array_equal(joined[key], whole[step][key][:size], err_msg=key)
        start += size


def test_resume_at_start_step_skips_reading(files):
    full = take(make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=1))
    assert len(full) == 10
    order = shuffle_indices(N, SEED, 1)
    CountingSource.decoded.clear()
    resumed = take(make_train_iter(source_of(files, CountingSource), batch_size=4, seed=SEED,
                                   epoch=1, start_step=6))
    assert_same_batches(resumed, full[6:])
    skipped, read = set(order[:24].tolist()), set(order[24:].tolist())
    assert set(CountingSource.decoded) == read
    assert not skipped & set(CountingSource.decoded)
    assert all(c == 1 for c in CountingSource.decoded.values())
    # the last step too
    assert take(make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=1,
                                start_step=10)) == []


def test_grain_state_resumes(files):
    full = take(make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=0))
    it = make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=0)
    first = take(it, 3)
    assert_same_batches(first, full[:3])
    state = it.get_state()
    CountingSource.decoded.clear()
    fresh = make_train_iter(source_of(files, CountingSource), batch_size=4, seed=SEED, epoch=0)
    fresh.set_state(state)
    rest = take(fresh)
    assert_same_batches(rest, full[3:])
    order = shuffle_indices(N, SEED, 0)
    assert set(CountingSource.decoded) == set(order[12:].tolist())
    # A state taken from a resumed (start_step) iterator resumes that iterator.
    it = make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=0, start_step=2)
    take(it, 2)
    fresh = make_train_iter(source_of(files), batch_size=4, seed=SEED, epoch=0, start_step=2)
    fresh.set_state(it.get_state())
    assert_same_batches(take(fresh), full[4:])


def test_augmentation_seeds(files):
    paths, labels, originals = files
    src = source_of(files)
    epochs = {e: take(make_train_iter(src, batch_size=16, seed=SEED, epoch=e))
              for e in (0, 1)}
    again = take(make_train_iter(source_of(files), batch_size=16, seed=SEED, epoch=1))
    assert_same_batches(again, epochs[1])
    stamps = {}
    for e, batches in epochs.items():
        position = 0
        stamp = np.zeros((N, 3), np.int64)
        for batch in batches:
            for row, i in zip(batch["image"], batch["index"]):
                draws = np.random.default_rng([SEED, 5, e, position]).integers(0, 256, 3)
                np.testing.assert_array_equal(row[0, 0], draws)
                expect = resize8(Image.fromarray(originals[i]))
                if draws[0] % 2:
                    expect = expect[:, ::-1]
                np.testing.assert_array_equal(row[1:], expect[1:])
                stamp[position] = draws
                position += 1
        assert position == N
        stamps[e] = stamp
    # another epoch draws other parameters at (almost) every position
    assert (stamps[0] != stamps[1]).any(axis=1).mean() > 0.9
    # and another seed too
    other = take(make_train_iter(src, batch_size=16, seed=SEED + 1, epoch=0))
    assert not np.array_equal(other[0]["image"][:, 0, 0], epochs[0][0]["image"][:, 0, 0])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_every_example_once(files, process_count):
    paths, labels, originals = files
    src = source_of(files)
    seen = []
    for p in range(process_count):
        batches = take(make_eval_iter(src, batch_size=16, process_index=p,
                                      process_count=process_count))
        assert len(batches) == 3
        for step, batch in enumerate(batches):
            local = 16 // process_count
            pos = step * 16 + p * local + np.arange(local)
            np.testing.assert_array_equal(batch["mask"], pos < N)
            assert batch["mask"].dtype == np.bool_
            np.testing.assert_array_equal(batch["index"], np.where(pos < N, pos, -1))
            for row, i, m in zip(batch["image"], batch["index"], batch["mask"]):
                if m:
                    np.testing.assert_array_equal(row, resize8(Image.fromarray(originals[i])))
                    assert batch["label"][list(batch["index"]).index(i)] == labels[i]
                else:
                    assert not row.any()
            seen.extend(batch["index"][batch["mask"]].tolist())
    assert sorted(seen) == list(range(N))


def test_workers_give_the_same_batches(files):
    src = source_of(files)
    ref = take(make_train_iter(src, batch_size=12, seed=SEED, epoch=0, sampler="balanced",
                               num_classes=NUM_CLASSES, start_step=1))
    it = make_train_iter(src, batch_size=12, seed=SEED, epoch=0, sampler="balanced",
                         num_classes=NUM_CLASSES, start_step=1, worker_count=2)
    try:
        got = take(it)
    finally:
        it.close()
    assert len(got) == 3
    assert_same_batches(got, ref)
    ref = take(make_eval_iter(src, batch_size=16, process_index=1, process_count=2))
    it = make_eval_iter(src, batch_size=16, process_index=1, process_count=2, worker_count=2)
    try:
        assert_same_batches(take(it), ref)
    finally:
        it.close()


def test_zip_members(files, tmp_path):
    paths, labels, _ = files
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, p in enumerate(paths):
            zf.write(p, f"m/{i}")
    zsrc = FileSource([f"{archive}::m/{i}" for i in range(N)], labels,
                      transform_train=stamp_train, transform_eval=resize8)
    assert_same_batches(take(make_train_iter(zsrc, batch_size=16, seed=SEED, epoch=0)),
                        take(make_train_iter(source_of(files), batch_size=16, seed=SEED,
                                             epoch=0)))
    np.testing.assert_array_equal(zsrc[7]["image"], source_of(files)[7]["image"])


@pytest.mark.parametrize("kwargs,words", [
    (dict(sampler="random"), ["sampler='random'", "'shuffle'", "'balanced'"]),
    (dict(remainder="keep"), ["remainder='keep'", "'partial'", "'drop'"]),
    (dict(batch_size=10, process_count=3), ["batch_size=10", "process_count=3"]),
    (dict(batch_size=12, process_count=2, process_index=2), ["process_index=2", "0..1"]),
    (dict(batch_size=12, multiple=8), ["batch_size=12", "multiple=8"]),
    (dict(start_step=5), ["start_step=5", "0..4"]),
])
def test_train_errors(files, kwargs, words):
    args = dict(batch_size=12, seed=0, epoch=0)
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        make_train_iter(source_of(files), **args)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_eval_and_helper_errors(files):
    with pytest.raises(ValueError, match=r"batch_size=9 .*process_count=2"):
        make_eval_iter(source_of(files), batch_size=9, process_count=2)
    with pytest.raises(ValueError, match=r"remainder='all'; valid choices are \('partial', "
                                         r"'drop'\)"):
        epoch_steps(40, 8, "all")
    with pytest.raises(ValueError, match="num_classes"):
        make_train_iter(source_of(files), batch_size=8, seed=0, epoch=0, sampler="balanced")


def test_imports_without_tensorflow():
    code = ("import sys, grain, ride_jax.data.grain_pipeline; "
            "print('tensorflow' in sys.modules, 'ride_jax.data.pil_transforms' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out


@pytest.mark.parametrize("workers,cores,threads", [
    (0, 2, 2), (0, 1, 1), (0, 64, 16),          # this process: one per core, at most 16
    (2, 2, 1), (4, 2, 1), (2, 8, 4), (3, 8, 2),  # workers: the cores shared out, >= 1
])
def test_reader_threads_are_one_per_core_shared_among_workers(workers, cores, threads):
    assert reader_options(workers, cores).num_threads == threads
