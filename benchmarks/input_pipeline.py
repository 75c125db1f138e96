"""Images/s of the input pipelines, and whether they keep up with the train step.

    python benchmarks/input_pipeline.py                     # in-memory loader + train step
    python benchmarks/input_pipeline.py --streaming         # also grain / tf.data / torch at 224
    python benchmarks/input_pipeline.py --skip-loader --skip-train --streaming --images 1024 --repeats 3

In-memory loader (``ride_jax.data.loader``): a CIFAR-100-LT-sized uint8 set (10,847
images, 32x32x3, ``synthetic_lt``) on the device; for each augmentation recipe and
batch size, a whole epoch of batches is made (host-side index and parameter draws,
then gather + crop/flip/rotate + normalise on the device). The RIDE ResNet-32 (3
experts; compiled as the trainer compiles it here: ``config.cpu_convolutions`` and
``config.cpu_fusion_barriers`` on a CPU) train step is then timed on the same batches four
ways, interleaved in one process: alone (batches made beforehand), fed (the loader's
iterator, one extra dispatch per step), fused (``plan_batch`` inside the jitted train
step) and scanned (``config.steps_per_call``: the loader's ``epoch_calls`` stacks all the
timed steps' batches in one call, and one jitted ``lax.scan`` runs them); "fed / alone"
etc. say how much the loader slows training (1.0 = not at all) or the scan speeds it up.

File pipelines (``--streaming``), side by side on the same ``--images`` synthetic 500x375
JPEG files and the same CPU cores: the official ImageNet-LT train transform
(RandomResizedCrop 224, flip, ColorJitter 0.4) and eval transform (Resize 256,
CenterCrop 224), host-side uint8 224x224 batches of ``--stream-batch``:

* ``grain``: ``ride_jax.data.grain_pipeline`` (``FileSource`` + ``make_train_iter`` /
  ``make_eval_iter``; PIL, torchvision-exact) with ``worker_count=0`` (reader threads
  in this process) and ``worker_count=--workers`` (default: the cores), with the reader
  threads ``GrainLoader`` uses (``grain_pipeline.reader_options``: one per core, shared
  out among the workers);
* ``tfdata``: ``ride_jax.data.streaming`` (tf.data, parallel maps, AUTOTUNE; needs
  TensorFlow);
* ``torch``: a ``torch.utils.data.Dataset`` opening each file with PIL and applying the
  official transform (``torchvision.transforms`` when torchvision imports, else
  ``ride_jax.data.pil_transforms``, the same PIL calls), ``DataLoader(num_workers=
  --workers)`` (spawned workers; skipped with a note where torch is missing);
* one-thread references, no pipeline: PIL decode alone (open + convert), the PIL resize
  alone (on decoded images) and decode + the whole transform.

Rates of a pipeline over whole epochs: per repeat, a fresh iterator reads one epoch of
``--images`` images (rounded up to whole batches; the files in turn) to its last batch.
"images/s" is the steady rate, the images of the epoch's second half over its time
(start-up left out: worker processes, TF graph building, and what was read ahead by
the first batch); "epoch img/s" is the whole epoch's (start-up included: what an epoch
of this length costs); "1st batch s" is the time to the first batch (torch: "(+s)" is
its persistent workers' start, a warm-up epoch paid once per run, not per epoch). Keep
epochs long against what a pipeline reads ahead during its start-up. Images/s per core
divides the steady rate by the cores used (all of this process's for the pipelines, 1
for the references); "vs tf.data" is the per-core ratio to the tf.data row of the same
transform.

Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import make_step, trainer_barriers  # noqa: E402

from ride_jax import compiler, losses  # noqa: E402
from ride_jax.data import make_loader  # noqa: E402
from ride_jax.data.loader import plan_batch  # noqa: E402
from ride_jax.data.synthetic import synthetic_lt  # noqa: E402
from ride_jax.models import create_model  # noqa: E402


def _median_rate(fn, repeats):
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_loader(ds, batch, augment, repeats, steps=None):
    loader = make_loader(ds, batch, augment=augment, remainder="drop")
    steps = steps or loader.steps_per_epoch
    jax.block_until_ready(next(loader.epoch(0)))            # compile

    def run():
        n, last = 0, None
        for k, b in enumerate(loader.epoch(1)):
            if k == steps:
                break
            n += b["label"].shape[0]
            last = b
        jax.block_until_ready(last)
        return n
    return _median_rate(run, repeats)


def bench_train(ds, batch, steps, repeats, experts=3, verbose=False):
    vec = losses.ride_schedule(ds.train_counts, epoch=170, reweight_epoch=160,
                               reweight_factor=0.05)
    model = create_model("resnet32", num_classes=ds.num_classes, num_experts=experts,
                         fusion_barriers=trainer_barriers())
    options = compiler.compiler_options("eigen")
    loader = make_loader(ds, batch, augment="ride", remainder="drop")
    first = next(loader.epoch(0))
    variables = jax.jit(model.init)(jax.random.key(0), first["image"])
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9,
                                                                nesterov=True))
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
    step = make_step(model, tx, vec, compiler_options=options)
    batches = [b for _, b in zip(range(steps), loader.epoch(1))]

    def alone():
        for b in batches:
            *new, loss = step(*state, b["image"], b["label"])
            state[:] = new
        loss.block_until_ready()
        return steps * batch

    def fed():
        for _, b in zip(range(steps), loader.epoch(2)):
            *new, loss = step(*state, b["image"], b["label"])
            state[:] = new
        loss.block_until_ready()
        return steps * batch
    # Fused: the loader's plan_batch inside the jitted train step, one dispatch per step.
    raw_step = make_step(model, tx, vec, jit=False)

    def fused_fn(params, batch_stats, opt_state, data, plan, step_id):
        b = plan_batch(data, plan, step_id, aug=loader.augment)
        return raw_step(params, batch_stats, opt_state, b["image"], b["label"])
    fused_step = jax.jit(fused_fn, donate_argnums=(0, 1, 2), compiler_options=options)

    # Scanned: every timed step in one call (stacked batches from epoch_calls), unrolled
    # on a CPU as the trainer does (ride_jax.train.scan_unroll; not imported: it needs
    # ml_collections, which a bare device image lacks).
    unroll = True if jax.default_backend() == "cpu" else 1
    def scan_fn(params, batch_stats, opt_state, images, labels):
        def body(carry, xs):
            *new, loss = raw_step(*carry, *xs)
            return tuple(new), loss
        carry, loss = jax.lax.scan(body, (params, batch_stats, opt_state), (images, labels),
                                   unroll=unroll)
        return (*carry, loss[-1])
    scan_step = jax.jit(scan_fn, donate_argnums=(0, 1, 2), compiler_options=options)

    def fused():
        plan, _, _ = loader.epoch_plan(2)
        data = loader.data
        for s in range(steps):
            *new, loss = fused_step(*state, data, plan, loader.step_id(s))
            state[:] = new
        loss.block_until_ready()
        return steps * batch

    def scanned():
        done = 0
        for k, b in loader.epoch_calls(3, steps_per_call=steps, stop=steps):
            *new, loss = (scan_step if k > 1 else step)(*state, b["image"], b["label"])
            state[:] = new
            done += k
        loss.block_until_ready()
        return done * batch

    runs = {"alone": alone, "fed": fed, "fused": fused, "scanned": scanned}
    for fn in runs.values():                                  # compile and warm up
        fn()
    rates = {k: [] for k in runs}
    for _ in range(repeats):                                  # interleaved, side by side
        for k, fn in runs.items():
            rates[k].append(_median_rate(fn, 1))
    if verbose:
        for k, r in rates.items():
            print(f"#   {k:<6} runs {[round(x) for x in r]}")
    return {k: statistics.median(r) for k, r in rates.items()}


# ---------------------------------------------------------------- streaming: side by side

STREAM_PIPELINES = ("grain", "tfdata", "torch")
STREAM_TRANSFORMS = ("train", "eval")
_TRANSFORM_NAMES = {"train": "train: RandomResizedCrop 224 + flip + ColorJitter 0.4",
                    "eval": "eval: Resize 256 + CenterCrop 224"}


def _cores() -> int:
    """The CPU cores this process may run on (what every pipeline shares)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                   # not Linux
        return os.cpu_count() or 1


def write_jpegs(workdir, n, seed=0):
    """``n`` synthetic 500x375 JPEG files (quality 90) in ``workdir``; their file names.

    Smooth-ish content (random 63x47 noise upsampled bilinearly) so that the files have
    a realistic size; written with PIL, so TensorFlow is not needed.
    """
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(workdir, exist_ok=True)
    names = []
    for k in range(n):
        base = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((500, 375), Image.BILINEAR)
        name = f"img_{k:04d}.jpg"
        img.save(os.path.join(workdir, name), quality=90)
        names.append(name)
    return names


def _torchvision_transforms():
    """``(train, eval)`` torchvision PIL transforms, or None where torchvision does not
    import (here: a CUDA torchvision wheel beside a CPU torch)."""
    try:
        import torchvision.transforms as T
    except Exception:                                        # noqa: BLE001 (any failure)
        return None
    return (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                       T.ColorJitter(0.4, 0.4, 0.4, 0)]),
            T.Compose([T.Resize(256), T.CenterCrop(224)]))


def _make_torch_dataset_class():
    import torch.utils.data

    class TorchFileDataset(torch.utils.data.Dataset):
        """The official loader's map-style dataset: ``__getitem__`` opens the file with
        PIL (torchvision's ``pil_loader``: ``Image.open`` + ``.convert('RGB')``) and
        applies the official transform, here up to the uint8 HWC image (ToTensor and
        Normalize are left out, as the other pipelines leave normalisation to the
        device). ``torchvision.transforms`` when it imports, else
        :mod:`ride_jax.data.pil_transforms` (the same PIL calls, torchvision-exact);
        item ``i`` reads file ``i % len(paths)``."""

        def __init__(self, paths, length, mode, use_torchvision):
            self.paths, self.length, self.mode = list(paths), int(length), mode
            self.use_torchvision = use_torchvision
            self._tv = None

        def __len__(self):
            return self.length

        def __getitem__(self, i):
            from PIL import Image
            with open(self.paths[i % len(self.paths)], "rb") as f:
                img = Image.open(f).convert("RGB")
            if self.use_torchvision:
                if self._tv is None:
                    self._tv = _torchvision_transforms()
                out = self._tv[0 if self.mode == "train" else 1](img)
                return torch.from_numpy(np.asarray(out, np.uint8).copy()), 0
            from ride_jax.data import pil_transforms as pt
            if self.mode == "train":
                rng = np.random.default_rng([0, int(i)])
                params = pt.sample_train_params(rng, img.height, img.width)
                out = pt.train_transform(img, params, size=224)
            else:
                out = pt.eval_transform(img, size=224, resize=256)
            return torch.from_numpy(out), 0

    TorchFileDataset.__module__ = __name__
    TorchFileDataset.__qualname__ = "TorchFileDataset"      # pickled by name (spawn)
    return TorchFileDataset


def __getattr__(name):
    # ``TorchFileDataset`` is made on first use, so that importing this module does not
    # import torch; the DataLoader's spawned workers find it here by name too.
    if name == "TorchFileDataset":
        cls = globals()[name] = _make_torch_dataset_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _epoch_time(make_iter, count, n):
    """One whole epoch of ``n`` images from a fresh iterator: ``(images, marks)``, where
    ``marks`` holds ``(images read, seconds)`` after each batch, the seconds counted from
    making the iterator."""
    t0 = time.perf_counter()
    it = make_iter(n)
    got, marks = 0, []
    while got < n:
        got += count(next(it))
        marks.append((got, time.perf_counter() - t0))
    getattr(make_iter, "close_iter", _close)(it)
    return got, marks


def _rate_between(marks, n, lo, hi):
    """Images/s between the first batch that brings the images read to ``lo * n`` and
    the one that brings them to ``hi * n`` (None where that span takes no time)."""
    a = next(m for m in marks if m[0] >= lo * n)
    b = next(m for m in marks if m[0] >= hi * n)
    return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else None


def _time_stream(make_iter, count, images, repeats, log=print, name="pipeline"):
    """Images/s of a pipeline over whole epochs of ``images`` images.

    Per repeat, a fresh iterator reads one whole epoch to its last batch. Two rates, each
    the median over the repeats: the steady rate, the images of the epoch's second half
    over its time (start-up left out: spawned workers, TF graph building), and the epoch
    rate, all images over the whole time (what one epoch of this length costs).

    Read-ahead: by its first batch a pipeline may hold many more made (grain's spawned
    workers had a whole 64-image epoch ready by then); a consumer that only counts keeps
    the buffers empty once started, so later images arrive as they are made. The steady
    rate is right while that start-up read-ahead ends before mid-epoch; where the
    epoch's third quarter comes more than 1.5x faster than its last, it may not, and a
    note through ``log`` asks for longer epochs. (The N / 2N estimator this replaced,
    the extra images over the extra time of an N- and a 2N-image run, had the same
    limit at N, and ran at N = 256: its rates came out up to 30x too high,
    BENCHMARKS.md "Input pipeline".) Returns ``(steady, epoch, startup, times)``:
    images/s, images/s, the median seconds to the first batch and the per-repeat
    ``(first, last)`` seconds.
    """
    steady, epoch, times = [], [], []
    for _ in range(repeats):
        n, marks = _epoch_time(make_iter, count, images)
        last = marks[-1][1]
        late = _rate_between(marks, n, 0.5, 1.0)
        steady.append(late if late is not None else n / last)
        epoch.append(n / last)
        times.append((marks[0][1], last))
        third, fourth = _rate_between(marks, n, 0.5, 0.75), _rate_between(marks, n, 0.75, 1.0)
        if third is None or (fourth is not None and third > 1.5 * fourth):
            log(f"# {name}: the epoch's third quarter came "
                f"{'at once' if third is None else f'{third / fourth:.1f}x faster'} than "
                f"its last: read-ahead may reach past mid-epoch; use a longer --images")
    return (statistics.median(steady), statistics.median(epoch),
            statistics.median(t for t, _ in times), times)


class _FirstN:
    """A torch batch sampler: the first ``n`` items (``n`` set before each epoch) in
    batches, shuffled when ``shuffle``."""

    def __init__(self, batch, shuffle, seed=0):
        self.batch, self.shuffle, self.n = batch, shuffle, 0
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for k in range(0, self.n, self.batch):
            yield order[k:k + self.batch].tolist()

    def __len__(self):
        return -(-self.n // self.batch)


def _close(it):
    for name in ("close", "_shutdown_workers"):              # grain / torch iterators
        fn = getattr(it, name, None)
        if fn is not None:
            fn()
            return


def _bench_serial(paths, transform, images, repeats):
    """One thread, no pipeline: PIL decode alone, the PIL resize alone (on decoded
    images) and decode + the whole transform; the per-core ceiling of the PIL loaders."""
    from PIL import Image
    from ride_jax.data import pil_transforms as pt
    paths = [paths[k % len(paths)] for k in range(images)]

    def decode_all():
        for p in paths:
            with Image.open(p) as img:
                img.convert("RGB")
        return len(paths)

    decoded = []
    for p in paths[:min(len(paths), 64)]:
        with Image.open(p) as img:
            decoded.append(img.convert("RGB"))
    rng = np.random.default_rng(0)
    crops = [pt.random_resized_crop_params(rng, im.height, im.width) for im in decoded]

    def resize_all():
        for k in range(images):
            im = decoded[k % len(decoded)]
            if transform == "train":
                pt.resized_crop(im, *crops[k % len(crops)], size=224)
            else:
                pt.resize_shorter(im, 256)
        return images

    def full_all():
        for k, p in enumerate(paths):
            with Image.open(p) as img:
                im = img.convert("RGB")
            if transform == "train":
                params = pt.sample_train_params(np.random.default_rng([0, k]), im.height,
                                                im.width)
                pt.train_transform(im, params, size=224)
            else:
                pt.eval_transform(im, size=224, resize=256)
        return images

    resize_name = ("PIL crop + resize 224 only" if transform == "train"
                   else "PIL resize 256 only")
    out = []
    for name, fn in (("PIL decode only (open+convert)", decode_all),
                     (resize_name, resize_all),
                     ("PIL decode + transform", full_all)):
        rates = [_median_rate(fn, 1) for _ in range(repeats)]
        out.append((name, rates))
    return out


def bench_streaming_compare(pipelines, images, batch, workers, repeats, workdir,
                            transforms=STREAM_TRANSFORMS, serial=True, log=print):
    """Images/s of the file pipelines on the same JPEG files and cores, side by side.

    Returns rows ``{'pipeline', 'transform', 'workers', 'cores', 'images_per_s',
    'images_per_s_per_core', 'epoch_images_per_s', 'ratio_to_tfdata', 'startup_s',
    'batch'}`` and ``'times_s'`` (pipelines: per repeat the seconds to the first and to
    the last batch) or ``'runs'`` (references: images/s per repeat). ``images_per_s`` is
    the steady rate of the epoch's second half, ``epoch_images_per_s`` the whole epoch's
    (start-up included), ``startup_s`` the time to the first batch (torch: also
    ``workers_start_s``, its persistent workers' warm-up epoch, paid once per run); the
    per-core figure divides the steady rate by the cores the pipeline ran on (all of
    this process's for the pipelines, 1 for the serial reference rows), and
    ``ratio_to_tfdata`` is the per-core ratio to the tf.data row of the same
    transform. A pipeline that cannot run here
    (its package missing) is left out, with a note through ``log``.
    """
    cores = _cores()
    names = write_jpegs(workdir, images)
    paths = [os.path.join(workdir, n) for n in names]
    images = batch * -(-images // batch)        # whole batches: every epoch ends exactly
    runners = []                       # (pipeline, workers, make(mode), count(batch))

    def add(name, w, fn, count=lambda b: len(b["label"])):
        runners.append((name, w, fn, count))

    if "grain" in pipelines:
        try:
            from ride_jax.data import grain_pipeline as gp
        except ImportError as e:
            log(f"# grain: skipped ({e})")
        else:
            def grain_source(n):                # n examples, reading the files in turn
                return gp.FileSource([paths[k % len(paths)] for k in range(n)],
                                     np.zeros(n, np.int64),
                                     transform_train=gp.official_train_transform(224),
                                     transform_eval=gp.official_eval_transform(224, 256))

            def grain_fn(w):
                def make(mode):
                    opts = gp.reader_options(w, cores)     # what GrainLoader uses
                    if mode == "train":
                        return lambda n: gp.make_train_iter(grain_source(n), batch_size=batch,
                                                            seed=0, epoch=0, worker_count=w,
                                                            read_options=opts)
                    return lambda n: gp.make_eval_iter(grain_source(n), batch_size=batch,
                                                       worker_count=w, read_options=opts)
                return make
            add("grain", 0, grain_fn(0))
            if workers > 0:
                add("grain", workers, grain_fn(workers))
    if "tfdata" in pipelines:
        try:
            from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
            from ride_jax.data.streaming import FileListSplit, StreamingDataset
        except ImportError as e:
            log(f"# tfdata: skipped ({e})")
        else:
            split = FileListSplit(workdir, tuple(names), np.zeros(len(names), np.int64))
            ds = StreamingDataset(name="bench", num_classes=1, class_names=("x",),
                                  train_counts=np.array([len(names)]), num_test=len(names),
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD, info={},
                                  train_source=split, test_source=split)

            def tf_make(mode):
                if mode == "train":                 # endless: read n images, then drop it
                    return lambda n: iter(ds.train_tf(batch, seed=0))
                return lambda n: iter(ds.eval_tf(batch).repeat())
            add("tf.data", "AUTOTUNE", tf_make, lambda b: int(b["label"].shape[0]))
    if "torch" in pipelines:
        try:
            import torch.utils.data
        except ImportError as e:
            log(f"# torch: skipped ({e})")
        else:
            tv = _torchvision_transforms() is not None
            label = "torch DataLoader (torchvision)" if tv else \
                "torch DataLoader (pil_transforms)"
            log(f"# torch {torch.__version__}: transforms from "
                f"{'torchvision' if tv else 'ride_jax.data.pil_transforms (torchvision does not import)'}")

            def torch_make(mode):
                # One DataLoader with persistent (spawned) workers, as a training run keeps
                # them over epochs; a fresh epoch iterator per run, of the first n items
                # (shuffled for train). The workers start in a warm-up epoch, timed apart
                # (``workers_start_s``): a run pays it once, not every epoch.
                sampler = _FirstN(batch, shuffle=(mode == "train"))
                cls = getattr(sys.modules[__name__], "TorchFileDataset")
                extra = ({"multiprocessing_context": "spawn", "persistent_workers": True}
                         if workers > 0 else {})
                loader = torch.utils.data.DataLoader(
                    cls(paths, 2 * images, mode, tv), batch_sampler=sampler,
                    num_workers=workers, **extra)

                def make(n):
                    sampler.n = n
                    return iter(loader)
                make.close_iter = lambda it: None
                make.finish = lambda: _close(loader._iterator) if workers > 0 else None
                make.workers_start_s = _epoch_time(make, lambda b: len(b[1]),
                                                   batch * max(workers, 1))[1][-1][1]
                return make
            add(label, workers, torch_make, lambda b: len(b[1]))

    rows = []
    for mode in transforms:
        for name, w, fn, count in runners:
            make = fn(mode)
            rate, epoch, startup, times = _time_stream(make, count, images, repeats, log,
                                                       f"{name} {mode} workers {w}")
            getattr(make, "finish", lambda: None)()
            rows.append({"pipeline": name, "transform": mode, "workers": w, "cores": cores,
                         "images_per_s": rate, "epoch_images_per_s": round(epoch, 1),
                         "startup_s": startup,
                         "times_s": [[round(t, 3) for t in pair] for pair in times]})
            if hasattr(make, "workers_start_s"):
                rows[-1]["workers_start_s"] = round(make.workers_start_s, 2)
        if serial:
            for name, rates in _bench_serial(paths, mode, images, repeats):
                rows.append({"pipeline": name, "transform": mode, "workers": "serial",
                             "cores": 1, "images_per_s": statistics.median(rates),
                             "epoch_images_per_s": None, "startup_s": None, "runs": rates})
    per_core = [r["images_per_s"] / r["cores"] for r in rows]
    tf_core = {r["transform"]: c for r, c in zip(rows, per_core) if r["pipeline"] == "tf.data"}
    for r, c in zip(rows, per_core):
        r["images_per_s_per_core"] = c
        ref = tf_core.get(r["transform"])
        r["ratio_to_tfdata"] = None if ref is None else round(c / ref, 3)
        r["images_per_s"] = round(r["images_per_s"], 1)
        r["images_per_s_per_core"] = round(r["images_per_s_per_core"], 1)
        r["startup_s"] = None if r["startup_s"] is None else round(r["startup_s"], 2)
        if "runs" in r:
            r["runs"] = [round(x, 1) for x in r["runs"]]
        r["batch"] = batch
    return rows


def print_streaming_table(rows, verbose=False, out=print):
    out(f"{'pipeline':<34} {'transform':<9} {'workers':>8} {'cores':>5} {'images/s':>9} "
        f"{'per core':>9} {'vs tf.data':>10} {'epoch img/s':>11} {'1st batch s':>11}")
    for r in rows:
        ratio = "-" if r["ratio_to_tfdata"] is None else f"{r['ratio_to_tfdata']:.2f}x"
        first = "-" if r["startup_s"] is None else f"{r['startup_s']:.2f}"
        epoch = "-" if r["epoch_images_per_s"] is None else f"{r['epoch_images_per_s']:.1f}"
        if "workers_start_s" in r:
            first += f" (+{r['workers_start_s']:.1f})"
        out(f"{r['pipeline']:<34} {r['transform']:<9} {r['workers']!s:>8} {r['cores']:>5} "
            f"{r['images_per_s']:>9.1f} {r['images_per_s_per_core']:>9.1f} {ratio:>10} "
            f"{epoch:>11} {first:>11}" + (
                ("   runs (images/s) " + str(r["runs"]) if "runs" in r else
                 "   (first, last) s " + str(r["times_s"])) if verbose else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--streaming", action="store_true",
                        help="also the file pipelines (JPEG -> 224), side by side")
    parser.add_argument("--pipelines", default=None,
                        help="with --streaming: comma list of " + ",".join(STREAM_PIPELINES)
                             + " (default: all; one whose package is missing is skipped)")
    parser.add_argument("--images", type=int, default=1024,
                        help="with --streaming: JPEG files, and images per timed epoch")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --streaming: grain / torch worker processes (default: "
                             "the CPU cores; grain is also run with 0)")
    parser.add_argument("--stream-batch", type=int, default=64)
    parser.add_argument("--stream-transforms", default="train,eval")
    parser.add_argument("--no-serial", action="store_true",
                        help="with --streaming: skip the one-thread PIL reference rows")
    parser.add_argument("--stream-steps", type=int, default=None,
                        help="(older option) images per timed run = this x --stream-batch")
    parser.add_argument("--json", default=None)
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    parser.add_argument("--skip-loader", action="store_true", help="skip the loader table")
    parser.add_argument("--skip-train", action="store_true", help="skip the train-step table")
    args = parser.parse_args(argv)
    pipelines = STREAM_PIPELINES if args.pipelines is None else tuple(
        p.strip() for p in args.pipelines.split(",") if p.strip())
    transforms = tuple(t.strip() for t in args.stream_transforms.split(",") if t.strip())
    bad = [p for p in pipelines if p not in STREAM_PIPELINES]
    if bad or not pipelines:
        parser.error(f"--pipelines {args.pipelines!r}: valid names are "
                     f"{','.join(STREAM_PIPELINES)}")
    if not transforms or any(t not in STREAM_TRANSFORMS for t in transforms):
        parser.error(f"--stream-transforms {args.stream_transforms!r}: valid names are "
                     f"{','.join(STREAM_TRANSFORMS)}")
    if args.pipelines is not None and not args.streaming:
        parser.error("--pipelines needs --streaming")
    images = args.images if args.stream_steps is None else args.stream_steps * args.stream_batch
    workers = _cores() if args.workers is None else args.workers
    if images < 1 or args.stream_batch < 1 or workers < 0 or args.repeats < 1:
        parser.error("--images / --stream-steps, --stream-batch and --repeats must be >= 1, "
                     "--workers >= 0")

    ds = synthetic_lt(num_classes=100, img_max=500, ratio=100)   # CIFAR-100-LT r100 sizes
    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, devices "
          f"{[d.device_kind for d in jax.devices()]}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"# in-memory loader: {len(ds.train)} images 32x32x3, median of {args.repeats}")
    print(f"{'pipeline':<28} {'batch':>6} {'images/s':>12}")
    rows = []
    for batch in [] if args.skip_loader else [int(b) for b in args.batches.split(",")]:
        for aug in ("none", "ldam", "ride"):
            rate = bench_loader(ds, batch, aug, args.repeats)
            rows.append({"pipeline": f"in-memory {aug}", "batch": batch,
                         "images_per_s": round(rate, 1)})
            print(f"{'in-memory ' + aug:<28} {batch:>6} {rate:>12.1f}", flush=True)
    print(f"# RIDE ResNet-32 (3 experts) train step, {args.train_steps} steps, alone vs fed by "
          f"the loader ('ride' augmentation)")
    print(f"{'batch':>6} {'alone img/s':>12} {'fed img/s':>12} {'fused img/s':>12} "
          f"{'scanned img/s':>14} {'fed/alone':>10} {'fused/alone':>12} {'scanned/fed':>12}")
    for batch in [] if args.skip_train else [int(b) for b in args.batches.split(",")]:
        r = bench_train(ds, batch, args.train_steps, args.repeats, verbose=args.verbose)
        for k in ("alone", "fed", "fused", "scanned"):
            rows.append({"pipeline": f"train step {k}", "batch": batch,
                         "images_per_s": round(r[k], 1)})
        print(f"{batch:>6} {r['alone']:>12.1f} {r['fed']:>12.1f} {r['fused']:>12.1f} "
              f"{r['scanned']:>14.1f} {r['fed'] / r['alone']:>10.3f} "
              f"{r['fused'] / r['alone']:>12.3f} {r['scanned'] / r['fed']:>12.3f}", flush=True)
    if args.streaming:
        cores = _cores()
        print(f"# file pipelines side by side: {images} synthetic 500x375 JPEGs (quality 90) "
              f"-> uint8 224x224 host batches of {args.stream_batch}, {cores} CPU cores; "
              f"whole epochs of {images} images from a fresh iterator, median of "
              f"{args.repeats}; images/s = the epoch's second half, epoch img/s = start-up "
              f"included; per core = images/s / cores used; 'vs tf.data' = per-core ratio "
              f"to tf.data, same transform", flush=True)
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            rows_s = bench_streaming_compare(
                pipelines, images, args.stream_batch, workers, args.repeats, tmp,
                transforms=transforms, serial=not args.no_serial,
                log=lambda m: print(m, flush=True))
        print_streaming_table(rows_s, verbose=args.verbose,
                              out=lambda m: print(m, flush=True))
        rows.extend(rows_s)
    if args.json:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    from ride_jax.allocator import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc()   # as the CLI does: measure what users run
    main()
