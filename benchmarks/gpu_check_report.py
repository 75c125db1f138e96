"""The Python half of ``benchmarks/gpu_check.sh``: machine facts, the carried data pack,
the full run's cache, one record per section, and the report (JSON + Markdown).

    python benchmarks/gpu_check_report.py env --out env.json
    python benchmarks/gpu_check_report.py pack --data cifar10-jpeg.zip --out packed.zip
    python benchmarks/gpu_check_report.py prepare --config configs/cifar10_jpeg_lt.py:path=X \
        --out c.npz --json c.json
    python benchmarks/gpu_check_report.py record --work W --name NAME --rc 0 ... -- CMD ...
    python benchmarks/gpu_check_report.py report --work W --out DIR --mode gpu

``gpu_check.sh`` runs every section as its own process under ``timeout`` and calls
``record`` after each (one JSON line in ``W/sections.jsonl``); ``report`` then reads each
section's own output (the suite's ``--json``, ``routed_eval.py --json``, ``vs_pytorch.py
--json``, pytest's JUnit XML, ``env``/``prepare`` JSON) and writes ``gpu_check.json``,
``gpu_check.md`` (a summary table with a row per section, then a table per section) and
``gpu_check.log`` (every section's output). Every number in them is read from those
outputs; nothing is estimated.

``pack``: the CIFAR-10 JPEG zip (62 MB) is too big to travel to the device machine
beside the repository (64 MiB in all), and its 200-epoch recipe only reads the
long-tailed subset. The pack keeps every entry name of the training and test listing
(so the listing, the long-tail selection and the decoded images are the same: the cache
made from it has the same fingerprint) but stores an empty file for each training image
the recipe does not select (about 28 MB for ratio 100).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Run order of gpu_check.sh (it holds the same list): name -> title.
SECTIONS = {
    "env": "machine and versions",
    "tests": "GPU numerics tests (pytest)",
    "prepare": "full-run cache (ride_jax.data.prepare)",
    "routed_eval": "routed RIDE-EA inference (benchmarks/routed_eval.py)",
    "vs_pytorch": "ride_jax vs the official PyTorch step (benchmarks/vs_pytorch.py)",
    "resnet50": "RIDE ResNet-50 train step (suite.py resnet50)",
    "eval": "evaluation forward (suite.py eval)",
    "train_step": "RIDE ResNet-32 train step (suite.py train_step)",
    "input": "in-memory input pipeline (suite.py input)",
    "full_run_f32": "full run, float32 (suite.py full_run)",
    "full_run_bf16": "full run, bfloat16 (suite.py full_run)",
}
SUITE_SECTIONS = {"resnet50": "resnet50", "eval": "eval", "train_step": "train_step",
                  "input": "input", "full_run_f32": "full_run", "full_run_bf16": "full_run"}
TIMEOUT_CODES = (124, 137)      # timeout(1): TERM sent (124), KILL needed (137)
LOG_TAIL_LINES = 400            # per section, in gpu_check.log


# ------------------------------------------------------------------------------- env

def _run(cmd, timeout=60) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def _version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cmd_env(a) -> int:
    """Machine facts; the backend decides which sections gpu_check.sh runs."""
    import jax
    dev = jax.devices()[0]
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "backend": jax.default_backend(), "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "jaxlib": _version("jaxlib"), "flax": _version("flax"), "optax": _version("optax"),
            "orbax-checkpoint": _version("orbax-checkpoint"), "numpy": _version("numpy"),
            "ml_collections": _version("ml_collections"),
            "tensorboardX": _version("tensorboardX"),
            "tensorflow_importable": _importable("tensorflow"),
            "python": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "wheels_installed": [w for w in os.environ.get("GPU_CHECK_WHEELS", "").split()
                                 if w]}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader"])
    if smi:
        info["nvidia_smi"] = smi.splitlines()
    commit = _run(["git", "rev-parse", "HEAD"])
    if commit:
        info["git_commit"] = commit
        info["git_dirty"] = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    # torch in its own process: it must not share CUDA with this one's jax.
    probe = ("import json, torch; print(json.dumps({'version': torch.__version__, "
             "'cuda': torch.cuda.is_available(), 'device': torch.cuda.get_device_name(0) "
             "if torch.cuda.is_available() else None}))")
    out = _run([sys.executable, "-c", probe], timeout=120)
    info["torch"] = json.loads(out.splitlines()[-1]) if out else None
    _write(a.out, info)
    print(f"{info['device_kind']} x{info['device_count']} ({info['backend']}), jax "
          f"{info['jax']}, python {info['python']}, torch "
          f"{(info['torch'] or {}).get('version', 'not installed')}")
    return 0


def _importable(name: str) -> bool:
    """Whether ``import name`` would find it (without importing: TensorFlow is slow)."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):        # ValueError: sys.modules[name] is None
        return False


def _write(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------- pack / prepare

def _load_config(spec: str):
    """``path[:arg]`` (a relative path is tried from the repository root too)."""
    from suite import _resolve_path

    from ride_jax import configlib
    path, arg = spec, None
    if ".py:" in spec:
        path, arg = spec.split(".py:", 1)
        path += ".py"
    return configlib.load(_resolve_path(path), arg)


def _with_arg(spec: str, item: str) -> str:
    return f"{spec},{item}" if ".py:" in spec else f"{spec}:{item}"


def cmd_pack(a) -> int:
    from ride_jax.data.image_folder import (_Tree, files_sha256, list_image_folder,
                                            long_tail_selection)
    if not os.path.exists(a.data):
        print(f"gpu_check_report.py pack: error: --data {a.data!r} does not exist",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    config = _load_config(_with_arg(a.config, f"path={os.path.abspath(a.data)}"))
    args = config.dataset.args.to_dict()
    index = list_image_folder(a.data)
    selected, _ = long_tail_selection(index, args.get("ratio"), args.get("img_max"),
                                      args.get("profile", "exp"), args.get("seed", 0))
    keep = {index.train_files[i] for i in selected} | set(index.test_files)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    tree = _Tree(os.path.abspath(a.data))
    try:
        tree.splits(["train", "test"])          # sets the zip's top-level prefix
        read = tree.reader()
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for rel in index.train_files + index.test_files:
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                z.writestr(info, read(rel) if rel in keep else b"")
    finally:
        tree.close()
    os.replace(tmp, a.out)
    packed = list_image_folder(a.out)
    same = (packed.train_files == index.train_files and packed.test_files == index.test_files)
    if not same:
        print("gpu_check_report.py pack: error: the packed listing differs from the source's",
              file=sys.stderr)
        return 1
    out = {"source": os.path.abspath(a.data), "packed": os.path.abspath(a.out),
           "bytes": os.path.getsize(a.out), "config": a.config,
           "ratio": args.get("ratio"), "img_max": args.get("img_max"),
           "train_files": len(index.train_files), "train_kept": len(selected),
           "test_files": len(index.test_files),
           "train_files_sha256": files_sha256(index.train_files),
           "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(out))
    return 0


def cmd_prepare(a) -> int:
    """``python -m ride_jax.data.prepare`` with the dataset and arguments of a recipe."""
    from ride_jax.data import prepare
    t0 = time.perf_counter()
    config = _load_config(a.config)
    argv = [f"--dataset={config.dataset.name}", f"--out={a.out}"]
    for key, value in config.dataset.args.to_dict().items():
        if value is not None:
            argv.append(f"--{key}={value}")
    print("python -m ride_jax.data.prepare " + shlex.join(argv), flush=True)
    rc = prepare.main(argv)
    if rc:
        return rc
    with open(a.out[:-4] + ".json") as f:
        summary = json.load(f)
    counts = summary["train_counts"]
    result = {"config": a.config, "cache": os.path.abspath(a.out),
              "dataset": config.dataset.name, "num_train": summary["num_train"],
              "num_test": summary["num_test"], "image_shape": summary["image_shape"],
              "num_classes": summary["num_classes"], "head": counts[0], "tail": counts[-1],
              "fingerprint": summary["fingerprint"],
              "seconds": round(time.perf_counter() - t0, 2)}
    if a.json:
        _write(a.json, result)
    return 0


# ----------------------------------------------------------------------------- record

def cmd_record(a) -> int:
    """One line of W/sections.jsonl; prints the section's status."""
    row = {"name": a.name, "command": shlex.join(a.argv) if a.argv else "",
           "log": a.log, "result": a.result}
    if a.skip:
        row.update(status=a.skip, rc=None, wall_s=0.0, time_cap_s=None)
    else:
        row.update(rc=a.rc, wall_s=round(a.wall_ms / 1000, 1), time_cap_s=a.time_cap)
        if a.rc == 0:
            row["status"] = "ok"
        elif a.rc in TIMEOUT_CODES:
            row["status"] = f"timed out at its time cap of {a.time_cap} s"
        else:
            row["status"] = f"failed (exit {a.rc}): {_last_error(a.log)}"
    with open(os.path.join(a.work, "sections.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(row["status"])
    return 0


def _last_error(log: str) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [x.strip() for x in f.read().splitlines() if x.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if ("Error" in line or "error" in line or "FAILED" in line) and len(line) < 400:
            return line[:300]
    return (lines[-1][:300] if lines else "no output")


# ----------------------------------------------------------------------------- report

def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}"


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(headers, rows) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _suite_rows(sec: dict, result) -> tuple[list, dict]:
    part = ((result or {}).get("sections") or {}).get(SUITE_SECTIONS[sec["name"]]) or {}
    return part.get("rows", []), part.get("memory", {})


def _junit(path) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    rows = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or el.text or "").strip().splitlines()
                message = message[0][:200] if message else ""
                break
        rows.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}",
                     "outcome": outcome, "seconds": float(case.get("time") or 0),
                     "message": message})
    return rows


def _refine(sec: dict, mode: str) -> None:
    """Rows from the section's own output, and a status that says what they hold."""
    name, status = sec["name"], sec["status"]
    if status.startswith(("skipped", "not selected", "dry run")):
        sec["rows"] = []
        return
    result = _load_json(sec["result"]) if sec.get("result") else None
    timed_out = sec.get("rc") in TIMEOUT_CODES
    if name == "tests":
        rows = _junit(sec["result"])
        sec["rows"] = rows
        bad = [r for r in rows if r["outcome"] in ("failed", "error")]
        skipped = [r for r in rows if r["outcome"] == "skipped"]
        if rows and status == "ok":
            sec["status"] = (f"ok: {len(rows) - len(skipped)} passed"
                             + (f", {len(skipped)} skipped" if skipped else ""))
        elif rows and bad:
            sec["status"] = (f"failed: {len(bad)} of {len(rows)} tests "
                             f"({', '.join(r['test'].split('::')[-1] for r in bad[:5])})")
        return
    if name in ("env", "prepare"):
        sec["rows"] = [result] if result else []
        if status == "ok" and not result:
            sec["status"] = "failed: no result file"
        return
    if name == "routed_eval":
        sec["rows"] = (result or {}).get("rows", [])
        sec["batch"] = (result or {}).get("batch")
    elif name == "vs_pytorch":
        sec["rows"] = (result or {}).get("results", [])
    else:
        rows, memory = _suite_rows(sec, result)
        sec["rows"], sec["memory"] = rows, memory
        errors = [r for r in rows if str(r.get("status", "")).startswith("error")]
        if errors:
            sec["status"] = f"ran with errors: {errors[0]['status']}"
            return
        if name.startswith("full_run") and rows:
            r = rows[0]
            if r.get("status") == "interrupted":
                sec["status"] = (f"partial: stopped at its time cap of {sec['time_cap_s']} s "
                                 f"after {r.get('evaluations', 0)} evaluations, step "
                                 f"{r.get('steps')} (of {r.get('epochs')} epochs)")
                return
            if r.get("status") != "finished":
                sec["status"] = f"failed: run status {r.get('status')!r}"
                return
    if timed_out and sec["rows"]:
        sec["status"] += " (rows written before the cap are kept)"
    elif status == "ok" and not sec["rows"]:
        sec["status"] = "failed: no rows in its result file"


def _section_md(sec: dict) -> list[str]:
    name, rows = sec["name"], sec.get("rows") or []
    title = f"### {name}: {SECTIONS.get(name, name)}"
    head = [title, "", f"Status: **{sec['status']}**"
            + (f"; {sec['wall_s']:.1f} s" if sec.get("wall_s") else ""), ""]
    if sec.get("command"):
        head += ["```bash", sec["command"], "```", ""]
    if not rows:
        return head
    if name == "env":
        r = rows[0]
        keys = ("date", "device_kind", "device_count", "backend", "nvidia_smi", "jax",
                "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_collections",
                "tensorboardX", "tensorflow_importable", "torch", "python", "cpu_count",
                "platform", "git_commit", "git_dirty", "wheels_installed", "xla_flags")
        body = _table(["key", "value"], [[k, json.dumps(r.get(k)) if isinstance(
            r.get(k), (dict, list, bool)) or r.get(k) is None else r.get(k)] for k in keys])
    elif name == "tests":
        body = _table(["test", "outcome", "s", "message"],
                      [[r["test"], r["outcome"], f"{r['seconds']:.1f}", r["message"]]
                       for r in rows])
    elif name == "prepare":
        r = rows[0]
        body = _table(["config", "train images", "test images", "shape", "head / tail",
                       "fingerprint", "s"],
                      [[f"`{r['config']}`", f"{r['num_train']:,}", f"{r['num_test']:,}",
                        "x".join(map(str, r["image_shape"])), f"{r['head']} / {r['tail']}",
                        r["fingerprint"][:16], f"{r['seconds']:.1f}"]])
    elif name == "routed_eval":
        buckets = sorted({b for r in rows for b in r["routed"]}, key=int)
        headers = (["setting", "used 1..E", "MACs/all", "all img/s"]
                   + [h for b in buckets for h in (f"routed/{b} img/s", "x")]
                   + ["masked img/s", "x"])
        body = _table(headers, [
            [r["setting"], " / ".join(f"{u:.2f}" for u in r["used"]),
             f"{r['macs_ratio']:.3f}", _num(r["all"])]
            + [c for b in buckets for c in (_num(r["routed"].get(b)),
                                            f"{r['routed'][b] / r['all']:.2f}"
                                            if b in r["routed"] else "-")]
            + [_num(r["masked"]), f"{r['masked'] / r['all']:.2f}"] for r in rows])
        body = [f"Batch {sec.get('batch')}.", ""] + body
    elif name == "vs_pytorch":
        body = _table(["E", "batch", "ride_jax img/s", "PyTorch img/s", "torch device",
                       "ride_jax / PyTorch"],
                      [[str(r["experts"]), str(r["batch"]), _num(r["images_per_s"]["ride_jax"]),
                        _num(r["images_per_s"]["torch"]),
                        str(r["versions"]["torch"].get("device", "-")),
                        f"{r['ride_jax_over']['torch']:.2f}"] for r in rows])
    elif name == "train_step":
        body = _table(["E", "impl", "barriers", "batch", "images/s", "compile s", "status"],
                      [[str(r["experts"]), r["impl"],
                        {True: "on", False: "off"}.get(r.get("fusion_barriers"), "-"),
                        str(r["batch"]), _num(r.get("images_per_s")),
                        _num(r.get("compile_s")), r["status"]] for r in rows])
    elif name == "resnet50":
        body = _table(["E", "batch", "image", "images/s", "compile s", "status"],
                      [[str(r["experts"]), str(r["batch"]), f"{r['image']}x{r['image']}",
                        _num(r.get("images_per_s")), _num(r.get("compile_s")), r["status"]]
                       for r in rows])
    elif name == "eval":
        body = _table(["model", "batch", "images/s", "compile s", "status"],
                      [[r["model"], str(r["batch"]), _num(r.get("images_per_s")),
                        _num(r.get("compile_s")), r["status"]] for r in rows])
    elif name == "input":
        body = _table(["pipeline", "batch", "images", "images/s", "status"],
                      [[r["pipeline"], str(r["batch"]), f"{r['num_images']:,}",
                        _num(r.get("images_per_s")), r["status"]] for r in rows])
    elif name.startswith("full_run"):
        body = _table(["config", "overrides", "epochs", "evaluations", "steps", "wall s",
                       "data s", "train images/s", "final top-1 %", "run status"],
                      [[f"`{r['config']}`", ", ".join(r.get("overrides", [])),
                        str(r["epochs"]), str(r.get("evaluations", "-")),
                        str(r.get("steps", "-")), _num(r.get("wall_s")),
                        _num(r.get("data_s")), _num(r.get("train_images_per_s")),
                        f"{100 * r['top1']:.2f}" if "top1" in r else "-",
                        r.get("status", "-")] for r in rows])
    else:
        body = [f"```json\n{json.dumps(rows, indent=1)}\n```"]
    mem = sec.get("memory") or {}
    tail = []
    if "peak_device_bytes" in mem:
        tail = ["", f"Peak device memory {mem['peak_device_bytes'] / 2**20:,.0f} MiB "
                f"({mem.get('device')}); host peak RSS "
                f"{mem.get('peak_host_rss_bytes', 0) / 2**20:,.0f} MiB."]
    return head + body + tail + [""]


def _failed(status: str) -> bool:
    return status.startswith(("failed", "timed out", "ran with errors"))


def _owed(status: str) -> bool:
    return not status.startswith("ok")


def cmd_report(a) -> int:
    recorded = {}
    path = os.path.join(a.work, "sections.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                recorded[row["name"]] = row
    sections = {}
    for name in list(SECTIONS) + [n for n in recorded if n not in SECTIONS]:
        sec = dict(recorded.get(name) or {"name": name, "status": "failed: never recorded",
                                          "wall_s": 0.0, "rc": None, "command": "",
                                          "log": "", "result": ""})
        _refine(sec, a.mode)
        sections[name] = sec
    env = (sections["env"].get("rows") or [{}])[0]
    report = {"date": env.get("date") or time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "mode": a.mode, "command": a.command, "budget_s": a.budget,
              "wall_s": a.wall, "device_kind": env.get("device_kind"),
              "backend": env.get("backend"), "jax": env.get("jax"), "machine": env,
              "sections": {n: {k: v for k, v in s.items() if k not in ("log",)}
                           for n, s in sections.items()}}
    failed = [n for n, s in sections.items() if _failed(s["status"])]
    owed = [n for n, s in sections.items() if _owed(s["status"])]
    report["failed"], report["not_measured"] = failed, owed
    os.makedirs(a.out, exist_ok=True)
    _write(os.path.join(a.out, "gpu_check.json"), report)

    tiny = (" (--tiny: code-path check, the numbers are not measurements)"
            if a.mode == "tiny" else "")
    md = [f"## GPU check: {env.get('device_kind', 'unknown device')} "
          f"({env.get('backend', '?')}), {report['date']}{tiny}", "",
          f"jax {env.get('jax')}, flax {env.get('flax')}, optax {env.get('optax')}, python "
          f"{env.get('python')}, torch {(env.get('torch') or {}).get('version', 'not installed')}"
          f"; {env.get('cpu_count')} CPUs. Command: `{a.command}` ({a.wall:.0f} s of a "
          f"{a.budget} s budget).", ""]
    md += _table(["section", "status", "wall s", "time cap s"],
                 [[n, s["status"], f"{s.get('wall_s') or 0:.1f}",
                   str(s.get("time_cap_s") or "-")] for n, s in sections.items()])
    md += ["", "Not measured by this run: " + (", ".join(owed) if owed else "none") + ".", ""]
    for sec in sections.values():
        if sec["name"] != "env" or sec.get("rows"):
            md += _section_md(sec)
    with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")

    with open(os.path.join(a.out, "gpu_check.log"), "w") as log:
        for sec in sections.values():
            log.write(f"===== {sec['name']}: {sec['status']}\n")
            if sec.get("command"):
                log.write(f"$ {sec['command']}\n")
            lines = []
            if sec.get("log") and os.path.exists(sec["log"]):
                with open(sec["log"], errors="replace") as f:
                    lines = f.read().splitlines()
            if len(lines) > LOG_TAIL_LINES:
                log.write(f"[... {len(lines) - LOG_TAIL_LINES} earlier lines left out]\n")
            log.write("\n".join(lines[-LOG_TAIL_LINES:]) + ("\n" if lines else ""))
    width = max(len(n) for n in sections)
    for n, s in sections.items():
        print(f"{n:<{width}}  {s['status']}")
    print(f"wrote {os.path.join(a.out, 'gpu_check.json')}, gpu_check.md, gpu_check.log")
    return 1 if failed else 0


# ------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check_report.py",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("env")
    s.add_argument("--out", required=True)
    s = sub.add_parser("pack")
    s.add_argument("--data", required=True, help="CIFAR-10 JPEG zip or folder")
    s.add_argument("--out", required=True, help="the packed zip to write")
    s.add_argument("--config", default="configs/cifar10_jpeg_lt.py",
                   help="the recipe whose long-tail selection is kept")
    s = sub.add_parser("prepare")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--json", default="")
    s = sub.add_parser("record")
    s.add_argument("--work", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--rc", type=int, default=0)
    s.add_argument("--wall-ms", type=int, default=0)
    s.add_argument("--time-cap", type=int, default=None)
    s.add_argument("--log", default="")
    s.add_argument("--result", default="")
    s.add_argument("--skip", default="", help="record as not run, with this status")
    s.add_argument("argv", nargs=argparse.REMAINDER, help="-- the section's command")
    s = sub.add_parser("report")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--mode", choices=("gpu", "tiny"), required=True)
    s.add_argument("--command", default="")
    s.add_argument("--budget", type=int, default=0)
    s.add_argument("--wall", type=float, default=0.0)
    a = p.parse_args(argv)
    if a.cmd == "record" and a.argv[:1] == ["--"]:
        a.argv = a.argv[1:]
    return {"env": cmd_env, "pack": cmd_pack, "prepare": cmd_prepare, "record": cmd_record,
            "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
