#!/usr/bin/env bash
# Build the GRE test VM: a Debian bookworm root filesystem (debootstrap) with
# Debian's cloud kernel, in a raw ext4 image, plus the kernel and initrd
# extracted for `qemu -kernel/-initrd`, and an SSH key for root.
#
# Usage: build-image.sh OUTPUT_DIR
# The caller (tests/vm/vm.py) keys OUTPUT_DIR by a hash of this file, so any
# change here produces a fresh image; an existing complete OUTPUT_DIR is reused.
set -euo pipefail

OUT=${1:?usage: build-image.sh OUTPUT_DIR}
MIRROR=${ANYCAST_EDGE_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
IMAGE_SIZE=2G

# Everything the GRE tests need inside the VM. python3-pyroute2 is Debian's
# 0.7.x, so the VM run also exercises the older pyroute2 API.
PACKAGES=(
  linux-image-cloud-amd64 systemd-sysv udev kmod
  openssh-server python3 python3-pyroute2 python3-nftables python3-iptables
  iproute2 iptables nftables conntrack tcpdump socat netcat-openbsd
  iputils-ping procps
)

if [ -e "$OUT/complete" ]; then
  echo "VM image already built in $OUT"
  exit 0
fi

for tool in debootstrap mkfs.ext4 ssh-keygen unshare; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

WORK="$OUT.building.$$"
ROOT="$WORK/root"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$ROOT"

echo "== debootstrap $SUITE (minbase)"
debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,ca-certificates \
  "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }

# No service may start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"

echo "== install packages: ${PACKAGES[*]}"
# A private mount namespace keeps /proc, /sys and /dev mounts out of the host.
unshare --mount --fork /bin/bash -euo pipefail -c '
  ROOT=$1; shift
  mount --make-rprivate /
  mount -t proc proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get -o Dpkg::Use-Pty=0 -q -y install --no-install-recommends "$@"
  chroot "$ROOT" apt-get clean
' _ "$ROOT" "${PACKAGES[@]}" >"$WORK/apt.log" 2>&1 \
  || { tail -40 "$WORK/apt.log" >&2; exit 1; }
rm -f "$ROOT/usr/sbin/policy-rc.d"
rm -rf "$ROOT"/var/lib/apt/lists/*

echo "== configure"
echo "aeg-vm" >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 aeg-vm\n' >"$ROOT/etc/hosts"
echo "/dev/vda / ext4 rw,relatime 0 1" >"$ROOT/etc/fstab"
# QEMU user-mode networking always hands out 10.0.2.15/24 behind 10.0.2.2:
# a static address avoids waiting for DHCP.
mkdir -p "$ROOT/etc/systemd/network"
cat >"$ROOT/etc/systemd/network/10-uplink.network" <<'NET'
[Match]
Name=eth0

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Timers and jobs that only slow a short-lived test VM down.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
            systemd-networkd-wait-online.service; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done

ssh-keygen -q -t ed25519 -N '' -C anycast-edge-test-vm -f "$WORK/id_ed25519"
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$WORK/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
printf 'UseDNS no\nPermitRootLogin prohibit-password\n' \
  >"$ROOT/etc/ssh/sshd_config.d/10-test-vm.conf"

echo "== extract kernel and initrd"
KERNEL=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)
INITRD=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -1)
cp "$KERNEL" "$WORK/vmlinuz"
cp "$INITRD" "$WORK/initrd.img"
basename "$KERNEL" | sed 's/^vmlinuz-//' >"$WORK/kernel-release"

echo "== make ext4 image ($IMAGE_SIZE)"
mkfs.ext4 -q -F -L root -d "$ROOT" "$WORK/rootfs.img" "$IMAGE_SIZE"
rm -rf "$ROOT"

touch "$WORK/complete"
rm -rf "$OUT"
mv "$WORK" "$OUT"
trap - EXIT
echo "VM image built in $OUT"
