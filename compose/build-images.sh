#!/usr/bin/env bash
# Builds every image of compose/Dockerfile (`make images` runs this):
#
#   conveyor-ingest|persist|notify|provision:<version> and :dev
#   conveyor-infer:<version>-cpu, :<version> and :dev          (TORCH_VARIANT=cpu, the default)
#   conveyor-infer:<version>-cuda and :dev-cuda                (TORCH_VARIANT=cuda)
#
# <version> is pyproject.toml's; each image is labelled with it, the git revision and the source
# (OCI labels). Settings, from the environment:
#   TARGETS        which targets (default: "ingest persist notify provision infer")
#   TORCH_VARIANT  cpu | cuda: which torch build infer gets (index: TORCH_INDEX_URL, default the
#                  PyTorch index of that variant); TORCH_SPEC pins it (default: the Makefile's)
#   TORCH_WHEELS   a directory holding torch's wheel: served to the build on loopback and looked
#                  in first (a machine without the PyTorch index, such as CI here). Defaults to
#                  pip's find-links (PIP_FIND_LINKS or pip's configuration) when that
#                  directory holds torch-<version>+cpu for cp311.
#   BUILD_NETWORK  the build's network; default "host" where the engine has no bridge network
#                  (a daemon started with --bridge=none), else the engine's default.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TARGETS="${TARGETS:-ingest persist notify provision infer}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
case "$TORCH_VARIANT" in
    cpu) default_index=https://download.pytorch.org/whl/cpu ;;
    cuda) default_index=https://download.pytorch.org/whl/cu128 ;;
    *) echo "TORCH_VARIANT must be cpu or cuda, not $TORCH_VARIANT" >&2; exit 2 ;;
esac
TORCH_INDEX_URL="${TORCH_INDEX_URL:-$default_index}"

version="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
# A remote URL may carry a token (https://user:token@host/...): never put that in a label.
source_url="$(git config --get remote.origin.url 2>/dev/null | sed -E 's#//[^/@]*@#//#' || true)"

network="${BUILD_NETWORK:-}"
if [ -z "$network" ] && ! docker network inspect bridge >/dev/null 2>&1; then
    network=host
fi

torch_args=(--build-arg "TORCH_SPEC=$TORCH_SPEC" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
torch_version="${TORCH_SPEC#torch==}"
wheels="${TORCH_WHEELS:-}"
# pip's own find-links (the environment's, else its configuration's), where it is a directory.
find_links="${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}"
if [ -z "$wheels" ] && [ "$TORCH_VARIANT" = cpu ] && [ -d "$find_links" ] \
    && compgen -G "$find_links/torch-$torch_version+cpu-cp311-*.whl" >/dev/null; then
    wheels="$find_links"
fi
server_pid=""
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ -n "$wheels" ] && [[ " $TARGETS " == *" infer "* ]]; then
    if [ "$network" != host ]; then
        echo "TORCH_WHEELS needs the build on the host network (BUILD_NETWORK=host)" >&2
        exit 2
    fi
    # The build reaches the wheel over loopback: a build context cannot name a directory
    # outside it, and copying a 200 MB wheel into the repository is worse. The same port each
    # time where it is free: the URL is a build argument, so a new one would miss the cache
    # and install torch again.
    port="$("$PYTHON" -c '
import socket, sys
for port in (int(sys.argv[1]), 0):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
' "${TORCH_WHEELS_PORT:-39871}")"
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 1 50); do
        "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" \
            2>/dev/null && break
        sleep 0.1
    done
    # The local build of the same version (+cpu), and torch's own dependencies from PyPI.
    torch_args=(--build-arg "TORCH_SPEC=torch==$torch_version+cpu"
        --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
        --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$port/")
    echo "torch $torch_version+cpu from $wheels"
fi

common=(--file compose/Dockerfile --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
    --build-arg "SOURCE=$source_url")
[ -z "$network" ] || common+=(--network "$network")

for target in $TARGETS; do
    tags=(--tag "conveyor-$target:$version" --tag "conveyor-$target:dev")
    extra=()
    if [ "$target" = infer ]; then
        tags=(--tag "conveyor-infer:$version-$TORCH_VARIANT")
        if [ "$TORCH_VARIANT" = cpu ]; then
            tags+=(--tag "conveyor-infer:$version" --tag "conveyor-infer:dev")
        else
            tags+=(--tag "conveyor-infer:dev-$TORCH_VARIANT")
        fi
        extra=("${torch_args[@]}" --build-arg "TORCH_VARIANT=$TORCH_VARIANT")
    fi
    started=$(date +%s)
    echo "building $target"
    DOCKER_BUILDKIT=1 docker build --quiet "${common[@]}" "${extra[@]}" --target "$target" \
        "${tags[@]}" . >/dev/null
    echo "built $target in $(( $(date +%s) - started )) s"
done

docker image ls --filter "reference=conveyor-*:$version*" \
    --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}'
