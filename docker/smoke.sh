#!/usr/bin/env bash
# `make docker-smoke`: build the CPU image for real, run `doctor --json` and the digits demo in it as the
# image's non-root user with a host folder at /runs, check report.json on the host, print the figures.
#
# Engine: `docker` when its daemon answers, else `podman` (installed with apt, with runc and debootstrap,
# when missing and running as root). Idempotent: a second run reuses the build cache and a fresh /runs.
#
# Environment (all optional):
#   KDC_ENGINE=docker|podman   force the engine
#   KDC_VARIANT=cpu|gpu        which target to build (default cpu; gpu stops after doctor, see docs/docker.md)
#   KDC_IMAGE                  image tag (default kdcompress:$KDC_VARIANT)
#   KDC_BASE                   base image for the variant (CPU_IMAGE or CUDA_IMAGE); default: the Dockerfile's
#                              when it is present or can be pulled, else a local Debian bookworm base made with
#                              debootstrap and imported as $KDC_LOCAL_BASE
#   KDC_LOCAL_BASE             tag of that local base (default localhost/debian:bookworm)
#   KDC_PIP_CA                 CA bundle handed to pip as the build secret pip_ca (default: pip's `cert`
#                              setting, else $PIP_CERT, else none)
#   KDC_WHEELS                 space-separated directories of local wheels, offered to pip as an extra
#                              find-links through a build context (for builds where the index is not
#                              reachable); "auto" = the local directories of this machine's pip configuration
#                              (find-links, file:// indexes); default none
#   KDC_TORCH_CPU_INDEX        override the Dockerfile's TORCH_CPU_INDEX
#   KDC_SMOKE_DIR              host folder mounted at /runs (default runs/docker-smoke)
#   KDC_SKIP_DEMO=1            stop after doctor
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VARIANT=${KDC_VARIANT:-cpu}
IMAGE=${KDC_IMAGE:-kdcompress:$VARIANT}
LOCAL_BASE=${KDC_LOCAL_BASE:-localhost/debian:bookworm}
SMOKE_DIR=${KDC_SMOKE_DIR:-$ROOT/runs/docker-smoke}
STATE=${KDC_STATE_DIR:-/var/tmp/kdcompress-docker}

say() { printf '[docker-smoke] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
human() { python3 -c "import sys; b = int(sys.argv[1]); print(f'{b / 1e9:.2f} GB ({b:,} bytes)')" "$1"; }

# ---------------------------------------------------------------------------------------------- engine
pick_engine() {
    if [ -n "${KDC_ENGINE:-}" ]; then echo "$KDC_ENGINE"; return; fi
    if command -v docker > /dev/null 2>&1 && timeout 20 docker info > /dev/null 2>&1; then echo docker; return; fi
    echo podman
}
ENGINE=$(pick_engine)
if [ "$ENGINE" = podman ]; then
    # podman settings that work on the development VM (runc, cgroupfs, no default ulimits, overlay),
    # kept in this folder instead of the system's /etc/containers files.
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/docker/containers.conf}
    export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$ROOT/docker/storage.conf}
    if ! command -v podman > /dev/null 2>&1; then
        [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1 \
            || die "neither a running docker nor podman; install one (as root this script installs podman with apt)"
        say "installing podman, runc and debootstrap with apt"
        apt-get update -q > /dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            podman runc debootstrap uidmap > /dev/null
    fi
fi
say "engine: $ENGINE ($($ENGINE --version 2>/dev/null | head -n1))"

# ------------------------------------------------------------------------------------------- base image
default_base() {  # the Dockerfile's default for this variant
    local arg=CPU_IMAGE; [ "$VARIANT" = gpu ] && arg=CUDA_IMAGE
    sed -n "s/^ARG $arg=//p" Dockerfile
}
have_image() { $ENGINE image inspect "$1" > /dev/null 2>&1; }
make_local_base() {
    have_image "$LOCAL_BASE" && return
    [ "$(id -u)" = 0 ] || die "no base image can be pulled and making $LOCAL_BASE with debootstrap needs root"
    command -v debootstrap > /dev/null 2>&1 || {
        say "installing debootstrap with apt"
        apt-get update -q > /dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap > /dev/null
    }
    local dir="$STATE/rootfs-bookworm"
    rm -rf "$dir"; mkdir -p "$dir"
    say "making $LOCAL_BASE: debootstrap --variant=minbase bookworm (about 30 s)"
    debootstrap --variant=minbase bookworm "$dir" "${KDC_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        > "$STATE/debootstrap.log" 2>&1 || die "debootstrap failed, see $STATE/debootstrap.log"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | $ENGINE import - "$LOCAL_BASE" > /dev/null 2>&1 || die "importing the base failed"
    rm -rf "$dir"
}
mkdir -p "$STATE"
if [ -n "${KDC_BASE:-}" ]; then
    BASE=$KDC_BASE
elif have_image "$LOCAL_BASE"; then
    BASE=$LOCAL_BASE
else
    BASE=$(default_base)
    if ! have_image "$BASE" && ! timeout 120 $ENGINE pull -q "$BASE" > /dev/null 2>&1; then
        say "$BASE cannot be pulled here: using a local Debian bookworm base instead"
        make_local_base
        BASE=$LOCAL_BASE
    fi
fi
say "base image: $BASE"

# ------------------------------------------------------------------------------------------------ build
build_args=(--build-arg "VARIANT=$VARIANT"
            --build-arg "KDCOMPRESS_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
)
# the source label: the git remote when there is one (a build argument, not --label, which would change
# every step's cache key in podman); the Dockerfile's default otherwise
SOURCE_URL=$(git config --get remote.origin.url 2>/dev/null || true)
[ -n "$SOURCE_URL" ] && build_args+=(--build-arg "SOURCE_URL=$SOURCE_URL")
if [ "$VARIANT" = gpu ]; then build_args+=(--build-arg "CUDA_IMAGE=$BASE"); else build_args+=(--build-arg "CPU_IMAGE=$BASE"); fi
[ -n "${KDC_TORCH_CPU_INDEX:-}" ] && build_args+=(--build-arg "TORCH_CPU_INDEX=$KDC_TORCH_CPU_INDEX")

# The CA bundle pip needs behind an intercepting proxy: a build secret, never a layer.
CA=${KDC_PIP_CA-$(pip config get global.cert 2>/dev/null || python3 -m pip config get global.cert 2>/dev/null || echo "${PIP_CERT:-}")}
if [ -n "$CA" ] && [ -s "$CA" ]; then
    build_args+=(--secret "id=pip_ca,src=$CA"); say "pip CA bundle (build secret pip_ca): $CA"
fi

# Optional local wheels: hard links into one folder (same filesystem: no copy), given as the build
# context `wheels`, which the Dockerfile bind-mounts for pip.
WHEELS=${KDC_WHEELS:-none}
[ "$WHEELS" = none ] && WHEELS=""
if [ "$WHEELS" = auto ]; then
    WHEELS=$(python3 -m pip config list 2>/dev/null | python3 -c '
import os, re, sys
out = []
for line in sys.stdin:
    key, _, val = line.partition("=")
    if key.endswith(("find-links", "index-url")):
        for tok in val.strip().strip("\x27\"").split():
            p = tok[len("file://"):] if tok.startswith("file://") else tok
            if p.startswith("/"):
                p = p.rstrip("/")
                cands = [p, os.path.join(os.path.dirname(p), "files")] if p.endswith("/simple") else [p]
                out += [c for c in cands if os.path.isdir(c) and any(f.endswith(".whl") for f in os.listdir(c))]
print(" ".join(dict.fromkeys(out)))')
fi
if [ -n "$WHEELS" ]; then
    farm="$STATE/wheels"; rm -rf "$farm"; mkdir -p "$farm"
    for d in $WHEELS; do
        [ -d "$d" ] || continue
        if ! cp -al -n "$d"/*.whl "$farm"/ 2> /dev/null; then say "cannot hard-link $d (another filesystem?): skipped"; fi
    done
    say "local wheels offered to pip: $(find "$farm" -name '*.whl' | wc -l) files from $WHEELS"
    build_args+=(--build-context "wheels=$farm")
fi

engine_build=("$ENGINE" build)
if [ "$ENGINE" = podman ]; then
    # chroot isolation and the host network: what works for builds on the development VM; the docker image
    # format, because the OCI format drops SHELL (RUN would use /bin/sh instead of bash -o pipefail).
    engine_build+=(--isolation chroot --network host --layers --format docker)
else
    export DOCKER_BUILDKIT=1
    engine_build=(docker buildx build --load --progress plain)
    docker buildx version > /dev/null 2>&1 || engine_build=(docker build --progress plain)
fi
log="$STATE/build-$VARIANT.log"
say "building $IMAGE (log: $log)"
t0=$(now)
if ! "${engine_build[@]}" "${build_args[@]}" -t "$IMAGE" -f Dockerfile . > "$log" 2>&1; then
    tail -n 40 "$log" >&2; die "build failed (full log: $log)"
fi
t1=$(now)
BUILD_S=$(secs "$t0" "$t1")
steps=$(grep -E 'STEP [0-9]+/[0-9]+: |^#[0-9]+ \[' "$log" | grep -v -c -E ' FROM ' || true)   # FROM has no cache line
cached=$(grep -c -E -- '^--> Using cache|^#[0-9]+ CACHED' "$log" || true)
SIZE=$($ENGINE image inspect "$IMAGE" --format '{{.Size}}')
LABELS=$($ENGINE image inspect "$IMAGE" --format '{{json .Config.Labels}}' | python3 -c '
import json, sys
lab = json.load(sys.stdin) or {}
get = lambda k: lab.get("org.opencontainers.image." + k, "")
print("version %s, source %s" % (get("version"), get("source")))')
case "$LABELS" in "version , "*) die "the image has no version label";; esac

# ------------------------------------------------------------------------------------------------- runs
run=("$ENGINE" run --rm --network none)
mkdir -p "$SMOKE_DIR"; chmod 0777 "$SMOKE_DIR"   # the image's user (uid 10001) writes here
# Idempotent: clear the previous demo with the container's own user (its files belong to uid 10001).
"${run[@]}" -v "$SMOKE_DIR:/runs" --entrypoint rm "$IMAGE" -rf /runs/demo

user=$("${run[@]}" --entrypoint id "$IMAGE" -u)
[ "$user" != 0 ] || die "the image runs as root"

say "kdcompress doctor --json"
"${run[@]}" "$IMAGE" doctor --json > "$SMOKE_DIR/doctor.json" || die "doctor failed (exit $?)"
python3 - "$SMOKE_DIR/doctor.json" "$VARIANT" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ort = d["onnxruntime"]
starts = {p["provider"]: p["starts"] for p in ort["providers"]}
print(f"[docker-smoke] doctor: kdcompress {d['kdcompress']}, python {d['python']}, torch {d['torch']['version']}, "
      f"onnxruntime {ort['version']} {sorted(ort['distributions'])}, providers that start: "
      f"{[p for p, ok in starts.items() if ok]}, not startable: {[p for p, ok in starts.items() if not ok]}",
      file=sys.stderr)
assert starts.get("CPUExecutionProvider"), "the CPU execution provider does not start"
if sys.argv[2] == "gpu":
    assert "onnxruntime-gpu" in ort["distributions"] and "onnxruntime" not in ort["distributions"], ort["distributions"]
    assert "CUDAExecutionProvider" in starts, "onnxruntime-gpu does not list the CUDA provider"
    cuda = next(p for p in ort["providers"] if p["provider"] == "CUDAExecutionProvider")
    print(f"[docker-smoke] doctor: CUDA provider starts={cuda['starts']} ({cuda.get('note') or 'no note'}); "
          f"torch sees {len(d['torch']['gpus'])} GPU(s)", file=sys.stderr)
EOF

DEMO_S="skipped (KDC_SKIP_DEMO=1)"
if [ "${KDC_SKIP_DEMO:-0}" != 1 ]; then
    say "kdcompress demo --out /runs/demo (uid $user, host folder $SMOKE_DIR at /runs)"
    t0=$(now)
    rc=0; "${run[@]}" -v "$SMOKE_DIR:/runs" "$IMAGE" demo --out /runs/demo --json > "$SMOKE_DIR/demo.json" || rc=$?
    t1=$(now)
    DEMO_S="$(secs "$t0" "$t1") s"
    [ "$rc" = 0 ] || die "demo exited with code $rc"
    report="$SMOKE_DIR/demo/distill/report.json"
    [ -e "$report" ] || die "no $report"
    if [ ! -r "$report" ]; then
        # kdcompress writes its files 0600 as uid 10001: a non-root host user reads them through the image
        "${run[@]}" -v "$SMOKE_DIR:/runs" --entrypoint cat "$IMAGE" /runs/demo/distill/report.json > "$SMOKE_DIR/report.json"
        report="$SMOKE_DIR/report.json"
    fi
    python3 - "$report" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["gates"]
assert g["passed"] is True, f"gates did not pass: {g.get('failed')}"
s, t = r["student"], r["teacher"]
print(f"[docker-smoke] report.json: gates passed; {t['arch']} -> {s['arch']}, recommended {r.get('recommended')}",
      file=sys.stderr)
EOF
fi

cat <<EOF
docker-smoke: PASS ($ENGINE, $IMAGE, base $BASE)
  image size:   $(human "$SIZE")
  labels:       $LABELS
  build time:   ${BUILD_S} s ($cached of $steps build steps from the cache)
  demo time:    ${DEMO_S} (kdcompress demo in the container, as uid $user)
  outputs:      $SMOKE_DIR/doctor.json, $SMOKE_DIR/demo/distill/report.json
EOF
