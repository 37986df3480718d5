#!/usr/bin/env bash
# Build a Debian container image that molecule and the lab run systemd in:
# one image per release, localhost/anycast-edge/debian<N>:latest.
#
# No registry is reachable from the build machines, so the image is made here:
# debootstrap a minbase rootfs of the suite and `podman import` it with systemd as CMD.
# Cached: does nothing when the image exists and was built from this script's
# current text for the same suite and mirror (a label holds that digest), unless
# --force is given.
#
# usage: scripts/build-image.sh [--suite bullseye|bookworm|trixie] [--force] [--image NAME] [--mirror URL]
# env:   ANYCAST_EDGE_SUITE (default bookworm), ANYCAST_EDGE_IMAGE, DEBIAN_MIRROR,
#        CONTAINERS_CONF (defaults to scripts/containers.conf)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite="${ANYCAST_EDGE_SUITE:-bookworm}"
image="${ANYCAST_EDGE_IMAGE:-}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
force=0

while [ $# -gt 0 ]; do
    case "$1" in
        --suite) suite="$2"; shift ;;
        --force) force=1 ;;
        --image) image="$2"; shift ;;
        --mirror) mirror="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

# The releases the collection supports (README.md, "Supported systems").
case "$suite" in
    bullseye) release=11 ;;
    bookworm) release=12 ;;
    trixie) release=13 ;;
    *) echo "build-image.sh: --suite must be bullseye, bookworm or trixie, not '$suite'" >&2; exit 2 ;;
esac
image="${image:-localhost/anycast-edge/debian$release:latest}"

export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

# What the role, its modules and the molecule/lab verifications need inside the
# container. Everything is preinstalled so that containers can run without a
# network (molecule uses network "none": the root namespace is left untouched).
# systemd-networkd is part of the systemd package in all three releases; it stays
# disabled unless a scenario enables it (molecule/networkd).
packages=(
    systemd systemd-sysv dbus
    iproute2 iptables nftables conntrack
    python3 python3-apt python3-pyroute2 python3-iptables python3-nftables
    procps libcap2-bin netcat-openbsd socat
    ca-certificates
    bird2
)

for tool in debootstrap podman tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is not installed" >&2; exit 1; }
done

# What the image is made from: a changed package list or suite means a rebuild.
digest="$( (cat "$0"; echo "$suite $mirror") | sha256sum | cut -c1-16)"

# Two builds at once (molecule and the lab) would both debootstrap; serialise them.
lock="/var/lock/anycast-edge-build-image.lock"
exec 9>"$lock"
flock 9

if [ "$force" -eq 0 ] && podman image exists "$image"; then
    built="$(podman image inspect --format '{{ index .Labels "anycast-edge.build" }}' "$image" 2>/dev/null || true)"
    if [ "$built" = "$digest" ]; then
        echo "build-image.sh: $image is up to date, nothing to do (--force rebuilds)"
        exit 0
    fi
    echo "build-image.sh: $image was built from another script or suite ($built, now $digest): rebuilding"
fi

rootfs="$(mktemp -d /var/tmp/anycast-edge-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

include="$(IFS=,; echo "${packages[*]}")"
echo "build-image.sh: debootstrap $suite from $mirror into $rootfs"
start=$(date +%s)
debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"

# A container gets its identity at first boot; an empty machine-id tells systemd so.
: > "$rootfs/etc/machine-id"
echo "anycast-edge" > "$rootfs/etc/hostname"
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
# Units that only make sense on real hardware or need a console/network.
for unit in getty.target systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log

echo "build-image.sh: podman import -> $image"
tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman import \
        --change 'CMD ["/sbin/init"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        --change 'ENV container=podman' \
        --change "LABEL anycast-edge.build=$digest" \
        --change "LABEL anycast-edge.suite=$suite" \
        --message "anycast.edge test image: debootstrap $suite minbase" \
        - "$image"
podman image exists "$image"
echo "build-image.sh: built $image ($suite) in $(( $(date +%s) - start )) s"
