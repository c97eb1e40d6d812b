#!/usr/bin/env bash
# Makes this machine able to build the image and run the Compose stack with podman, for the
# container tests (tests/test_containers.py). Idempotent: a second run takes about a second
# (and starts the image's build aside, which then reuses every layer).
#
#   sudo bash cluster/podman-ci.sh
#
# 1. podman, runc, debootstrap and openssl from Debian (podman-compose comes with the
#    project's test extra: pip install -e '.[test]').
# 2. A drop-in, /etc/containers/containers.conf.d/50-seg1b.conf, for a sandboxed host: the
#    runc runtime (crun refuses a hybrid cgroup layout), cgroupfs, file-based event and
#    container logs (no systemd or journald), and default ulimits at or below the host's hard
#    limits. Without systemd, podman runs no health checks by itself: `podman healthcheck run`
#    runs them (the tests do).
# 3. The base image the Dockerfile's FROM names. It is pulled when a registry answers; where
#    none does, a stand-in is made from Debian's bookworm (debootstrap from the host's
#    configured mirror) and tagged with that name. The stand-in's Python is Debian's 3.11.2,
#    not the 3.11.13 of the official image; its label `seg1b.base=debian-standin` says so, and
#    the host's extra CA certificates are trusted inside it, so pip works behind an
#    intercepting proxy.
# 4. The image itself, built once in the background (the lock's wheels, downloaded into its
#    dependency layer, are most of a first build) while the tests' environment installs; the
#    container tests' own build waits on the same lock (BUILD_LOCK), then reuses every layer.
# Without root or podman it prints why and exits 0: the container tests then skip, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | head -n 1)
say() { echo "podman-ci: $*"; }

if [[ $(id -u) != 0 ]]; then
  say "not root: podman is not set up here, the container tests will skip"
  exit 0
fi

need=()
for tool in podman runc debootstrap openssl; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1; then
    say "could not install ${need[*]}: the container tests will skip"
    exit 0
  fi
fi

# A drop-in, rewritten on every run: the machine's own containers.conf is left as it is.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[[ $nofile == unlimited || $nofile -gt 20000 ]] && nofile=20000
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
mkdir -p /etc/containers/containers.conf.d
cat >/etc/containers/containers.conf.d/50-seg1b.conf <<EOF
# written by cluster/podman-ci.sh (seg1b); delete it to undo
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

if podman image exists "$base"; then
  say "base image $base present"
elif timeout 120 podman pull -q "$base" >/dev/null 2>&1; then
  say "base image $base pulled"
else
  say "no registry answers: making a stand-in for $base from Debian bookworm"
  rootfs=$(mktemp -d /var/tmp/seg1b-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  sources=(/etc/apt/sources.list.d/*.sources)
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' "${sources[@]}" 2>/dev/null | head -n 1 || true)
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,passwd \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  # The official image's pip installs into its own Python; Debian's refuses without this.
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/locale "$rootfs"/usr/share/man
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL seg1b.base=debian-standin seg1b.python=3.11.2' \
    --change 'CMD ["python3"]' - "$base" >/dev/null 2>&1
  say "stand-in $base made ($(podman image inspect "$base" --format '{{.Size}}') bytes)"
fi

# The lock is taken here and held by the background build until it ends (flock(1); the tests
# take it with filelock, the same flock(2) lock), so no test builds beside it.
lock=/var/tmp/seg1b-image-build.lock
exec 9>"$lock"
flock 9
(podman build -q -f Dockerfile . || true) </dev/null >/var/tmp/seg1b-image-build.log 2>&1 &
say "building the image in the background (log: /var/tmp/seg1b-image-build.log)"
