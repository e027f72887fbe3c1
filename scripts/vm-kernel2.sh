#!/usr/bin/env bash
# Fetches the VM tier's second kernel: the newest Debian kernel the package registry offers
# ($VM_KERNEL2_SUITE, today trixie-backports), unpacked for the VM under $VM_KERNELS_DIR/KVER without
# installing it on this machine (no dpkg database entry, nothing in /boot or /lib/modules), with no
# kernel headers: the second kernel proves the prebuilt CO-RE object loads where no compiler could run.
# Prints nothing on success; records the version in $VM_KERNEL2_FILE. Idempotent. Run as root
# (scripts/setup.sh calls it; it needs neither the venv nor this checkout's code).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh

log() { printf 'vm-kernel2: %s\n' "$*" >&2; }

if [ -s "$VM_KERNEL2_FILE" ] && [ -d "$VM_KERNELS_DIR/$(cat "$VM_KERNEL2_FILE")" ]; then
    exit 0
fi

# A private apt state (lists, cache) for that one suite: the machine's own sources stay as they are.
apt_dir=$STATE_DIR/apt-kernel2
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
# The first stanza of the machine's deb822 source (its mirror and keyring), with the suite swapped.
awk 'BEGIN{RS="";ORS="\n\n"} NR==1{print; exit}' /etc/apt/sources.list.d/debian.sources \
    | sed -E "s/^Suites:.*/Suites: $VM_KERNEL2_SUITE/" > "$apt_dir/sources/kernel2.sources"
apt_opts=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o Dir::State::Status=/dev/null -o APT::Architecture=amd64)
log "apt-get update ($VM_KERNEL2_SUITE only, state in $apt_dir)"
apt-get "${apt_opts[@]}" update >/dev/null

# The generic flavour (not -cloud, not -rt: those lack drivers or change scheduling), newest version.
KVER=$(apt-cache "${apt_opts[@]}" search --names-only '^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64$' \
       | awk '{print $1}' | sed -E 's/^linux-image-//' | sort -V | tail -n 1)
[ -n "$KVER" ] || { log "error: no linux-image-*-amd64 in $VM_KERNEL2_SUITE"; exit 1; }
# linux-image-KVER is the image itself, or (since Debian's 7.x packaging) a small package that
# depends on linux-base-KVER, linux-binary-KVER (vmlinuz) and linux-modules-KVER: take all that exist.
pkgs=$(apt-cache "${apt_opts[@]}" search --names-only "^linux-(image|base|binary|modules)-${KVER//+/\\+}\$" \
       | awk '{print $1}')
log "downloading $KVER: $(echo $pkgs)"
rm -f "$apt_dir"/cache/archives/*.deb
# shellcheck disable=SC2086  # a word list of package names
(cd "$apt_dir/cache/archives" && apt-get "${apt_opts[@]}" download $pkgs >/dev/null 2>&1) \
    || { log "error: apt-get download $pkgs failed"; exit 1; }

root=$VM_KERNELS_DIR/$KVER
rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for deb in "$apt_dir"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
rm -f "$apt_dir"/cache/archives/*.deb
# Debian 13 ships modules under /usr/lib/modules; depmod -b (kmod 30) looks in ROOT/lib/modules.
[ -e "$root.tmp/lib" ] || ln -s usr/lib "$root.tmp/lib"
moddir=$root.tmp/lib/modules/$KVER
[ -r "$moddir/vmlinuz" ] || [ -r "$root.tmp/boot/vmlinuz-$KVER" ] || { log "error: no vmlinuz in $pkgs"; exit 1; }
# virtme's initramfs cannot insmod .ko.xz (the same as for the first kernel, see setup.sh).
log "decompressing $KVER modules"
find "$moddir/kernel" -name '*.ko.xz' -print0 | xargs -0 -r -P "$(nproc)" -n 64 xz -d -f
depmod -b "$root.tmp" "$KVER"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$KVER" > "$VM_KERNEL2_FILE"
log "ok: $root"
