#!/usr/bin/env bash
# Build the Debian 12 container image that molecule and the lab run systemd in.
#
# No registry is reachable from the build machines, so the image is made here:
# debootstrap a minbase bookworm rootfs and `podman import` it with systemd as CMD.
# Cached: does nothing when the image already exists, unless --force is given.
#
# usage: scripts/build-image.sh [--force] [--image NAME] [--mirror URL]
# env:   ANYCAST_EDGE_IMAGE, DEBIAN_MIRROR, CONTAINERS_CONF (defaults to scripts/containers.conf)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${ANYCAST_EDGE_IMAGE:-localhost/anycast-edge/debian12:latest}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
force=0

while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --image) image="$2"; shift ;;
        --mirror) mirror="$2"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

# What the role, its modules and the molecule/lab verifications need inside the
# container. Everything is preinstalled so that containers can run without a
# network (molecule uses network "none": the root namespace is left untouched).
packages=(
    systemd systemd-sysv dbus
    iproute2 iptables nftables conntrack
    python3 python3-apt python3-pyroute2 python3-iptables python3-nftables
    procps libcap2-bin netcat-openbsd socat
    ca-certificates
    bird2
)
# An image made from another package list is rebuilt (a label holds the list's digest).
packages_digest="$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"

for tool in debootstrap podman tar; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: '$tool' is not installed" >&2; exit 1; }
done

# Two builds at once (molecule and the lab) would both debootstrap; serialise them.
lock="/var/lock/anycast-edge-build-image.lock"
exec 9>"$lock"
flock 9

if [ "$force" -eq 0 ] && podman image exists "$image"; then
    built="$(podman image inspect --format '{{ index .Labels "anycast-edge.packages" }}' "$image" 2>/dev/null || true)"
    if [ "$built" = "$packages_digest" ]; then
        echo "build-image.sh: $image exists, nothing to do (--force rebuilds)"
        exit 0
    fi
    echo "build-image.sh: $image was made from another package list: rebuilding"
fi

rootfs="$(mktemp -d /var/tmp/anycast-edge-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

include="$(IFS=,; echo "${packages[*]}")"
echo "build-image.sh: debootstrap $suite from $mirror into $rootfs"
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
        --change "LABEL anycast-edge.packages=$packages_digest" \
        --message "anycast.edge test image: debootstrap $suite minbase" \
        - "$image"
podman image exists "$image"
echo "build-image.sh: built $image"
