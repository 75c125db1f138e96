#!/usr/bin/env bash
# Every measurement still owed on a GPU, in one command: one JSON and a Markdown table.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine (budgeted: < 8 minutes)
#   bash benchmarks/gpu_check.sh --tiny --out /tmp/gc  # CI / this CPU: every step, tiny sizes
#   bash benchmarks/gpu_check.sh --make-carry          # here, once: what the GPU machine needs
#   bash benchmarks/gpu_check.sh --only full_run_f32,full_run_bf16   # a second pass
#
# Sections, run in this order, each its own process under timeout(1) (a section that
# fails or runs out of time is recorded as such, and the next one runs):
#
#   env            jax's device kind and versions, torch/CUDA, nvidia-smi, git commit
#   tests          pytest tests/test_steps_per_call.py tests/test_fusion_barriers.py (GPU
#                  numerics of the rolled scan and of the fusion barriers)          [GPU]
#   prepare        the full run's cache: ride_jax.data.prepare with the recipe's data
#                  (CIFAR-10-JPEG-LT, ratio 100; --tiny: the synthetic smoke set)
#   routed_eval    benchmarks/routed_eval.py (synthetic routers, RIDE-3, batch 512)
#   vs_pytorch     benchmarks/vs_pytorch.py --torch-device cuda (RIDE-3, batch 128) [GPU]
#   resnet50       suite.py resnet50 (ImageNet-LT recipe, 224x224, batch 128)       [GPU]
#   eval           suite.py eval (RIDE-3 ResNet-32 forward, batch 512)
#   train_step     suite.py train_step (E = 1..4, batch 128 and 512)
#   input          suite.py input (the in-memory loader, three augmentations)
#   full_run_f32   suite.py full_run: the 200-epoch CIFAR-10-JPEG-LT RIDE-3 recipe from the
#                  cache, steps_per_call=0 (a whole epoch per compiled call: the GPU path)
#   full_run_bf16  the same with model.dtype=bfloat16
#
# [GPU]: on a CPU these are recorded as "skipped: no GPU". Without --tiny and without a
# GPU every section after env is skipped so (the full sizes take hours on a CPU) and the
# exit status is 1.
#
# Time: the sections share --budget seconds (default 460, so the command ends inside 8
# minutes); each has its own cap, and none starts with under 20 s left. The full runs
# come last and split what is left (they are guaranteed 140 s together): a run stopped
# by its cap stops cleanly (SIGTERM: the trainer saves and returns) and is recorded as
# "partial" with its epochs, wall time and images/s so far. `--only full_run_f32,
# full_run_bf16` gives them the whole budget in a second command.
#
# Output (--out, default $OUT if set, else ./gpu_check_out): gpu_check.json (date,
# device kind, jax version, each section's status, wall seconds, rows), gpu_check.md (a
# summary table with a row per section, then a table per section, ready for
# BENCHMARKS.md) and gpu_check.log (each section's output). Three files: the device
# tool brings back at most 8. Scratch (the cache, per-section JSON) goes to a temporary
# folder, removed at the end unless --keep-work.
#
# The GPU machine has no TensorFlow (not needed: the cache is made without it) and no
# ml_collections or tensorboardX: `--make-carry` (run here, once) writes
# workdir_gpu_check/ (ignored by git's /workdir*/ rule): wheels/ (those two, pure
# Python) and cifar10-jpeg-lt.zip (the CIFAR-10 JPEG zip with the unselected training
# images emptied: ~28 MB instead of 62, same listing, same selected images, same cache
# fingerprint). On the device: run `bash benchmarks/gpu_check.sh` with carry
# ["workdir_gpu_check"]; the defaults find both there.
#
# Exit status: 0 when no section failed (skipped and partial ones are listed as "not
# measured"), 1 when one failed or timed out, 2 for a bad option (one-line message).

set -uo pipefail

PROG="benchmarks/gpu_check.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="benchmarks/gpu_check_report.py"     # every command runs from $ROOT
SECTIONS=(env tests prepare routed_eval vs_pytorch resnet50 eval train_step input
          full_run_f32 full_run_bf16)
GPU_ONLY=" tests vs_pytorch resnet50 "
CARRY_DIR="$ROOT/workdir_gpu_check"
PACKED="$CARRY_DIR/cifar10-jpeg-lt.zip"
SHARED_DATA="$ROOT/../shared/data/cifar10-jpeg/cifar10-jpeg.zip"
CARRY_WHEELS=(ml_collections tensorboardX)
FULL_CONFIG="configs/cifar10_jpeg_lt.py"
TINY_FULL_CONFIG="configs/synthetic_lt.py:smoke,experts=1"
MIN_START_S=20      # a section does not start with less time than this left
GRACE_S=15          # after the cap's SIGTERM, seconds until SIGKILL (the run saves)
FULL_RESERVE_S=140  # kept for the full runs while the other sections run

die() { echo "$PROG: error: $*" >&2; exit 2; }

usage() {
    sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --tiny            tiny sizes (CI, a CPU): every code path, the numbers are no measurements
  --out DIR         where gpu_check.json/.md/.log go (default \$OUT, else ./gpu_check_out)
  --data PATH       CIFAR-10 JPEG zip or folder (default ../shared/data/cifar10-jpeg/
                    cifar10-jpeg.zip, else workdir_gpu_check/cifar10-jpeg-lt.zip)
  --cache NPZ       a prepared cache for the full runs (prepare is then not run)
  --wheels DIR      pip-install these wheels (--target, no index) before anything runs
                    (default workdir_gpu_check/wheels when ml_collections or tensorboardX
                    is missing)
  --budget S        seconds for all sections together (default 460; --tiny 600)
  --only A,B        run these sections (env always runs; prepare when a full run needs it)
  --skip A,B        leave these out
  --python PY       the interpreter (default \$PYTHON, else python3)
  --keep-work       keep the scratch folder (its path is printed)
  --make-carry      write workdir_gpu_check/ (wheels + packed data) and exit
  --dry-run         run nothing: record every section's command as on a GPU (CI checks
                    that the GPU-size commands still parse)
Sections: ${SECTIONS[*]}
EOF
}

# ------------------------------------------------------------------------------ options
TINY=0; OUT_DIR="${OUT:-}"; DATA=""; CACHE=""; WHEELS=""; BUDGET=""; ONLY=""; SKIP=""
PY="${PYTHON:-python3}"; KEEP_WORK=0; MAKE_CARRY=0; DRY_RUN=0
ARGS=("$@")
while [ $# -gt 0 ]; do
    opt=$1; val=""; has_val=0
    case "$opt" in
        --*=*) val=${opt#*=}; opt=${opt%%=*}; has_val=1 ;;
    esac
    case "$opt" in
        --out|--data|--cache|--wheels|--budget|--only|--skip|--python)
            if [ $has_val = 0 ]; then
                if [ $# -lt 2 ] || [[ "$2" == --* ]]; then die "$opt needs a value"; fi
                val=$2; shift
            fi
            [ -n "$val" ] || die "$opt needs a value" ;;
        --tiny|--keep-work|--make-carry|--dry-run|-h|--help)
            [ $has_val = 0 ] || die "$opt takes no value (got '$opt=$val')" ;;
        *) die "unknown option '$1'; valid options: --tiny --out --data --cache --wheels" \
               "--budget --only --skip --python --keep-work --make-carry --dry-run --help" ;;
    esac
    case "$opt" in
        --tiny) TINY=1 ;;
        --keep-work) KEEP_WORK=1 ;;
        --make-carry) MAKE_CARRY=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        --out) OUT_DIR=$val ;;
        --data) DATA=$val ;;
        --cache) CACHE=$val ;;
        --wheels) WHEELS=$val ;;
        --budget) BUDGET=$val ;;
        --only) ONLY=$val ;;
        --skip) SKIP=$val ;;
        --python) PY=$val ;;
    esac
    shift
done

check_sections() {   # option, comma list
    local item
    IFS=',' read -r -a items <<<"$2"
    [ ${#items[@]} -gt 0 ] || die "$1 is empty; valid sections: ${SECTIONS[*]}"
    for item in "${items[@]}"; do
        [[ " ${SECTIONS[*]} " == *" $item "* ]] \
            || die "$1: unknown section '$item'; valid sections: ${SECTIONS[*]}"
    done
}
[ -z "$ONLY" ] || check_sections --only "$ONLY"
[ -z "$SKIP" ] || check_sections --skip "$SKIP"
[[ ",$SKIP," != *",env,"* ]] || die "--skip env: env cannot be left out (it finds the GPU)"
if [ -z "$BUDGET" ]; then BUDGET=$([ $TINY = 1 ] && echo 600 || echo 460); fi
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 30 ] \
    || die "--budget '$BUDGET': expected whole seconds >= 30"
command -v "$PY" >/dev/null 2>&1 || die "--python '$PY': no such interpreter"
[[ "$PY" != */* ]] || PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
[ -z "$CACHE" ] || [ -f "$CACHE" ] || die "--cache '$CACHE': no such file (make one with" \
    "python -m ride_jax.data.prepare)"
[ -z "$CACHE" ] || [[ "$CACHE" == *.npz ]] || die "--cache '$CACHE': expected a .npz file"
[ -z "$DATA" ] || [ -e "$DATA" ] || die "--data '$DATA': no such file or folder"
if [ -n "$WHEELS" ]; then
    [ -d "$WHEELS" ] || die "--wheels '$WHEELS': no such folder"
    compgen -G "$WHEELS/*.whl" >/dev/null || die "--wheels '$WHEELS': no .whl file in it"
fi
[ -z "$OUT_DIR" ] && OUT_DIR="./gpu_check_out"
[ ! -e "$OUT_DIR" ] || [ -d "$OUT_DIR" ] || die "--out '$OUT_DIR': exists and is not a folder"
if [ -z "$DATA" ]; then
    DATA=$SHARED_DATA
    [ -e "$DATA" ] || [ ! -e "$PACKED" ] || DATA=$PACKED
fi
cd "$ROOT" || exit 1
# Absolute paths: every section runs from the repository root.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$OLDPWD/$1" ;; esac; }
OUT_DIR=$(cd "$OLDPWD" && mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd) \
    || die "--out '$OUT_DIR': cannot create it"
[ -z "$CACHE" ] || CACHE=$(abspath "$CACHE")
DATA=$(realpath -m "$(abspath "$DATA")")
[ -z "$WHEELS" ] || WHEELS=$(abspath "$WHEELS")

# ---------------------------------------------------------------------- --make-carry
if [ $MAKE_CARRY = 1 ]; then
    mkdir -p "$CARRY_DIR/wheels" || exit 1
    for pkg in "${CARRY_WHEELS[@]}"; do
        ver=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null)
        spec=$pkg${ver:+==$ver}
        echo "pip download $spec"
        "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CARRY_DIR/wheels" "$spec" \
            || { echo "$PROG: pip download $spec failed" >&2; exit 1; }
    done
    echo "packing $DATA -> $PACKED"
    "$PY" "$HELPER" pack --data "$DATA" --out "$PACKED" --config "$FULL_CONFIG" || exit 1
    du -sh "$CARRY_DIR"
    echo "On the device: run command 'bash benchmarks/gpu_check.sh' with carry" \
         "[\"workdir_gpu_check\"] and timeout_s 600."
    exit 0
fi

# --------------------------------------------------------------------------- set up
START_MS=$(date +%s%3N)
DEADLINE_MS=$((START_MS + BUDGET * 1000))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
cleanup() { if [ $KEEP_WORK = 1 ]; then echo "scratch kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
export PYTHONUNBUFFERED=1
if [ $TINY = 1 ] && [[ "${XLA_FLAGS:-}" != *xla_backend_optimization_level* ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
fi
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }
say "$([ $TINY = 1 ] && echo tiny || echo gpu)$([ $DRY_RUN = 1 ] && echo ' (dry run)') mode, budget ${BUDGET}s, out $OUT_DIR, scratch $WORK"

# Wheels: given, or the carried ones when a module the GPU image lacks is missing here.
if [ -z "$WHEELS" ] && [ -d "$CARRY_DIR/wheels" ] \
        && ! "$PY" -c "import ml_collections, tensorboardX" >/dev/null 2>&1; then
    WHEELS="$CARRY_DIR/wheels"
fi
export GPU_CHECK_WHEELS=""
if [ -n "$WHEELS" ] && [ $DRY_RUN = 0 ]; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$WHEELS"/*.whl >"$WORK/wheels.log" 2>&1; then
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        GPU_CHECK_WHEELS=$(cd "$WHEELS" && ls ./*.whl | sed 's|^\./||' | tr '\n' ' ')
        say "installed wheels from $WHEELS: $GPU_CHECK_WHEELS"
    else
        say "pip install of $WHEELS failed (sections that need them will fail):"
        tail -n 3 "$WORK/wheels.log"
    fi
fi

selected() {   # is section $1 asked for (--only/--skip)?
    if [ "$1" = env ]; then return 0; fi
    if [[ ",$SKIP," == *",$1,"* ]]; then return 1; fi
    if [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; then return 0; fi
    if [ "$1" = prepare ] && [ -z "$CACHE" ] \
            && [[ ",$ONLY," == *",full_run_"* ]]; then return 0; fi
    return 1
}

record() {     # name, then the helper's record options
    "$PY" "$HELPER" record --work "$WORK" --name "$@"
}

HAS_GPU=0; BACKEND=""; TORCH_CUDA=""
FULL_PENDING=0
selected full_run_f32 && FULL_PENDING=$((FULL_PENDING + 1))
selected full_run_bf16 && FULL_PENDING=$((FULL_PENDING + 1))

# run_section NAME CAP: runs CMD (an array set by the caller) as section NAME.
run_section() {
    local name=$1 cap=$2 reason="" now left t rc start wall status reserve=0
    local log="$WORK/$name.log" result="${RESULT:-$WORK/$name.json}"
    if ! selected "$name"; then
        reason="not selected (--only/--skip)"
    elif [ "$name" != env ] && [ $TINY = 0 ] && [ $HAS_GPU = 0 ]; then
        reason="skipped: no GPU (jax backend '${BACKEND:-unknown}'); use --tiny on a CPU"
    elif [[ "$GPU_ONLY" == *" $name "* ]] && [ $HAS_GPU = 0 ]; then
        reason="skipped: no GPU (jax backend '${BACKEND:-unknown}')"
    elif [ -n "${SKIP_REASON:-}" ]; then
        reason=$SKIP_REASON
    fi
    if [ -z "$reason" ] && [ $DRY_RUN = 1 ]; then
        reason="dry run: not run"
    fi
    if [ -n "$reason" ]; then
        status=$(record "$name" --skip "$reason" --result "$result" -- "${CMD[@]}")
        say "$name: $status"
        return
    fi
    if [[ "$name" != full_run_* ]] && [ $TINY = 0 ] && [ $FULL_PENDING -gt 0 ]; then
        reserve=$FULL_RESERVE_S
    fi
    now=$(date +%s%3N)
    left=$(( (DEADLINE_MS - now) / 1000 - GRACE_S - reserve ))
    t=$(( cap < left ? cap : left ))
    [ "$name" != env ] || t=$cap        # env always runs: it finds the GPU
    if [ $t -lt $MIN_START_S ]; then
        reason="skipped: budget spent (${left}s left to it of --budget $BUDGET)"
        status=$(record "$name" --skip "$reason" --result "$result" -- "${CMD[@]}")
        say "$name: $status"
        return
    fi
    say "$name: running (time cap ${t}s)"
    start=$(date +%s%3N)
    timeout -k "$GRACE_S" "$t" "${CMD[@]}" >"$log" 2>&1 </dev/null
    rc=$?
    wall=$(( $(date +%s%3N) - start ))
    status=$(record "$name" --rc "$rc" --wall-ms "$wall" --time-cap "$t" --log "$log" \
             --result "$result" -- "${CMD[@]}")
    say "$name: $status ($((wall / 1000)) s)"
    if [ "$rc" != 0 ]; then tail -n 5 "$log" | sed 's/^/    /'; fi
}

SUITE=("$PY" benchmarks/suite.py)
[ $TINY = 1 ] && SUITE+=(--tiny)

# --------------------------------------------------------------------------- env
CMD=("$PY" "$HELPER" env --out "$WORK/env.json")
run_section env 90
if [ -f "$WORK/env.json" ]; then
    read -r BACKEND TORCH_CUDA < <("$PY" -c '
import json, sys
e = json.load(open(sys.argv[1]))
print(e.get("backend") or "unknown", "yes" if (e.get("torch") or {}).get("cuda") else "no")
' "$WORK/env.json")
fi
[ "$BACKEND" = gpu ] && HAS_GPU=1
if [ $DRY_RUN = 1 ]; then HAS_GPU=1; BACKEND="gpu (dry run)"; TORCH_CUDA=yes; fi

# --------------------------------------------------------------------------- tests
if [ $TINY = 1 ]; then
    TESTS=(tests/test_steps_per_call.py -k "scanned_step_computes or rolled_scan")
else
    TESTS=(tests/test_steps_per_call.py tests/test_fusion_barriers.py)
fi
# CI=true would turn the CPU-only tests' skips on a GPU into failures: the report lists them.
CMD=(env -u CI "$PY" -m pytest -q -p no:cacheprovider --junitxml "$WORK/tests.xml" "${TESTS[@]}")
RESULT="$WORK/tests.xml" run_section tests 100

# --------------------------------------------------------------------------- prepare
if [ $TINY = 1 ]; then RUN_CONFIG=$TINY_FULL_CONFIG; PREP_CONFIG=$TINY_FULL_CONFIG
else RUN_CONFIG=$FULL_CONFIG; PREP_CONFIG="$FULL_CONFIG:path=$DATA"; fi
if [ -n "$CACHE" ]; then
    SKIP_REASON="skipped: --cache given ($CACHE)" run_section prepare 0
elif [ $FULL_PENDING = 0 ]; then
    SKIP_REASON="skipped: no full run selected" run_section prepare 0
else
    CACHE="$WORK/full_run.npz"
    CMD=("$PY" "$HELPER" prepare --config "$PREP_CONFIG" --out "$CACHE" --json "$WORK/prepare.json")
    run_section prepare 60
fi

# --------------------------------------------------------------------------- routed_eval
if [ $TINY = 1 ]; then
    ROUTED=(--experts 2 --classes 10 --go-on 0.5 --batch 8 --batches 1 --repeats 1 --buckets 2)
else
    ROUTED=(--go-on 0.1,0.5,1.0 --batch 512 --batches 4 --repeats 3 --buckets 4,8)
fi
CMD=("$PY" benchmarks/routed_eval.py "${ROUTED[@]}" --json "$WORK/routed_eval.json")
run_section routed_eval "$([ $TINY = 1 ] && echo 120 || echo 60)"   # tiny: compile-bound, slower under load

# --------------------------------------------------------------------------- vs_pytorch
if [ $TINY = 1 ]; then
    VS=(--experts 1 --batch 8 --steps 1 --repeats 1 --rounds 1)
else
    VS=(--experts 3 --batch 128 --steps 20 --repeats 3 --rounds 2)
fi
CMD=("$PY" benchmarks/vs_pytorch.py --torch-device cuda "${VS[@]}" --json "$WORK/vs_pytorch.json")
if [ $HAS_GPU = 1 ] && [ "$TORCH_CUDA" != yes ]; then
    SKIP_REASON="skipped: torch is missing or sees no CUDA device" run_section vs_pytorch 0
else
    run_section vs_pytorch 80
fi

# --------------------------------------------------------------------------- suite sections
if [ $TINY = 1 ]; then
    R50=(); EVAL=(); STEP=(); INPUT=()
else
    R50=(--resnet50-batches 128 --steps 10 --repeats 3)
    EVAL=(--steps 20 --repeats 3)
    STEP=(--experts 1,2,3,4 --batches 128,512 --steps 20 --repeats 3)
    INPUT=(--repeats 3)
fi
CMD=("${SUITE[@]}" --only resnet50 "${R50[@]}" --json "$WORK/resnet50.json")
run_section resnet50 70
CMD=("${SUITE[@]}" --only eval "${EVAL[@]}" --json "$WORK/eval.json")
run_section eval 40
CMD=("${SUITE[@]}" --only train_step "${STEP[@]}" --json "$WORK/train_step.json")
run_section train_step 130
CMD=("${SUITE[@]}" --only input "${INPUT[@]}" --json "$WORK/input.json")
run_section input 40

# --------------------------------------------------------------------------- full runs
FULL=("${SUITE[@]}" --only full_run --full-run --full-run-config "$RUN_CONFIG"
      --full-run-cache "$CACHE" --full-run-set steps_per_call=0)
# --tiny checks the code path: a ResNet-8 (CIFAR ResNet with one block per stage)
# compiles several times faster than the ResNet-32 of the GPU runs.
[ $TINY = 1 ] && FULL+=(--full-run-set model.cifar_blocks=1)
for dtype in f32 bf16; do
    name=full_run_$dtype
    extra=(); [ $dtype = bf16 ] && extra=(--full-run-set model.dtype=bfloat16)
    CMD=("${FULL[@]}" "${extra[@]}" --json "$WORK/$name.json")
    if selected "$name" && [ ! -f "$CACHE" ] && [ $DRY_RUN = 0 ]; then
        SKIP_REASON="skipped: no cache (prepare did not make one)" run_section "$name" 0
    else
        # Each full run takes its share of what is left (the first half, the second all).
        left=$(( (DEADLINE_MS - $(date +%s%3N)) / 1000 - GRACE_S ))
        share=$(( FULL_PENDING > 1 ? left / FULL_PENDING : left ))
        run_section "$name" "$share"
    fi
    selected "$name" && FULL_PENDING=$((FULL_PENDING - 1))
done

# --------------------------------------------------------------------------- report
WALL_S=$(( ($(date +%s%3N) - START_MS) / 1000 ))
say "report"
MODE=$([ $TINY = 1 ] && echo tiny || echo gpu)
"$PY" "$HELPER" report --work "$WORK" --out "$OUT_DIR" --mode "$MODE" \
    --command "bash $PROG${ARGS[*]:+ ${ARGS[*]}}" --budget "$BUDGET" --wall "$WALL_S"
rc=$?
if [ $TINY = 0 ] && [ $HAS_GPU = 0 ]; then
    echo "$PROG: jax sees no GPU (backend '${BACKEND:-unknown}'): nothing was measured; on a" \
         "CPU run --tiny" >&2
    rc=1
fi
exit $rc
