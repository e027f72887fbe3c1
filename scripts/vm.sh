#!/usr/bin/env bash
# Runs ONE command as root inside a throwaway VM booted on the real Debian 6.12 kernel (the one with a
# usable update_socket_protocol fmod_ret hook; this host's kernel refuses BPF trampolines) and exits
# with that command's status. See `scripts/vm.sh --help`.
#
# Host side: boots the kernel with virtme-ng (qemu, TCG) on a read-only 9p view of the host root.
# Guest side: the same file, re-invoked inside the VM as `vm.sh --guest SHARE_DIR`, prepares the
# guest (modules, pseudo filesystems, PATH), runs the command and writes its status to SHARE_DIR, a
# host temp dir mounted read-write. One file, so both halves agree.
set -euo pipefail

# In the guest every fork+exec costs ~0.1 s (TCG), so the guest path avoids external commands where
# a builtin does: the host hands over an absolute, resolved path, so no readlink/dirname there.
if [ "${1:-}" = --guest ]; then SELF=${BASH_SOURCE[0]}; else SELF=$(readlink -f "${BASH_SOURCE[0]}"); fi
REPO=${SELF%/*/*}
# shellcheck source=config.sh
. "$REPO/scripts/config.sh"

usage() {
    cat <<EOF
usage: scripts/vm.sh [--timeout SECS] [--kernel KVER] [--rw-repo] [--verbose] [--] CMD [ARG...]

Boots the Debian $(cat "$VM_KVER_FILE" 2>/dev/null || echo 6.12) kernel in qemu (TCG, $VM_CPUS vCPUs, $VM_MEMORY),
runs CMD as root with $REPO as working directory and exits with CMD's status.

  --timeout SECS  end the VM after SECS seconds (default \$VM_TIMEOUT=$VM_TIMEOUT); exit 124
  --kernel KVER   boot another kernel: one unpacked under $VM_KERNELS_DIR
                  (scripts/vm-kernel2.sh: $(cat "$VM_KERNEL2_FILE" 2>/dev/null || echo none yet), no headers)
  --rw-repo       writes to the repo directory land on the host; by default the guest sees
                  a writable overlay of it whose changes are thrown away with the VM
  --verbose, -v   show the guest kernel console on stderr (boot problems)

Guest: the host's root filesystem, read-only over 9p, with throwaway overlays on /etc /usr /var
/tmp /home /opt /srv (and the repo); PATH starts with $VENV/bin; modules
($VM_MODULES) loaded; debugfs, tracefs, bpffs, cgroup2 mounted. stdin is empty.
The host environment is not passed in: use \`env VAR=value CMD\`.
Exit status: CMD's (127 not found, 126 not executable); 124 timeout; 125 vm.sh or the VM
failed before CMD finished (boot failure, guest kernel panic: rerun with --verbose).
EOF
}

# ---------------------------------------------------------------------------------------------
# Guest side (runs as root inside the VM, called by the string handed to `vng --exec`).
# ---------------------------------------------------------------------------------------------
gwarn() { printf 'vm.sh (guest): warning: %s\n' "$*" >&2; }

ensure_mount() {  # TYPE DIR: mount TYPE on DIR unless the last mount on DIR already is one
    local dev mnt type rest found=
    while read -r dev mnt type rest; do
        [ "$mnt" != "$2" ] || found=$type
    done < /proc/self/mounts
    [ "$found" != "$1" ] || return 0
    mkdir -p "$2" 2>/dev/null || true
    mount -t "$1" "$1" "$2" || gwarn "cannot mount $1 on $2"
}

guest_main() {
    local share=$1 m rc
    local -a argv
    # Tells the host the VM got as far as this script (see the end of the host side).
    : > "$share/started"
    # The argv travels as a NUL-separated file, not as shell text: the --exec string is run by the
    # guest's /bin/sh (dash), which cannot parse bash's printf %q output ($'...') for arguments with
    # control characters, and the kernel command line that carries it is limited to 2 KiB.
    mapfile -d '' -t argv < "$share/argv" && [ ${#argv[@]} -gt 0 ] || {
        printf 'vm.sh (guest): error: cannot read the command from %s\n' "$share/argv" >&2
        printf '125\n' > "$share/status"
        exit 125
    }

    export PATH="$VENV/bin:$PATH"

    # Debian's 6.12 has these as modules (the host kernel has them built in). Loading them here makes
    # a missing one a clear warning instead of an odd test failure later. modprobe succeeds for a
    # built-in module, so no special case is needed; it comes from the host's kmod package.
    if command -v modprobe >/dev/null; then
        # One modprobe for all (each exec is slow here); name the culprit only when that fails.
        # shellcheck disable=SC2086  # VM_MODULES is a word list
        if ! modprobe -q -a $VM_MODULES; then
            for m in $VM_MODULES; do
                modprobe -q "$m" || gwarn "cannot load module $m"
            done
        fi
    else
        gwarn "no modprobe in the guest (install kmod on the host: scripts/setup.sh)"
    fi

    # virtme-ng-init 1.42 mounts debugfs, tracefs and cgroup2 itself (bpffs it does not); checked
    # anyway so a vng upgrade that stops doing it does not break bcc and cgroup tests.
    ensure_mount debugfs /sys/kernel/debug
    ensure_mount tracefs /sys/kernel/tracing
    ensure_mount bpf /sys/fs/bpf
    ensure_mount cgroup2 /sys/fs/cgroup

    cd "$REPO"
    # Not exec: the status also goes to the share so the host can tell "CMD exited 255" from "the
    # VM died" (vng reports 255 for both). Missing command: 127, not executable: 126, like a shell.
    set +e
    # Paths are left to bash (126 not executable, 127 missing); bare names get a clear message.
    if [[ ${argv[0]} != */* ]] && ! command -v -- "${argv[0]}" >/dev/null; then
        printf 'vm.sh (guest): %s: command not found\n' "${argv[0]}" >&2
        printf '127\n' > "$share/status"
        exit 127
    fi
    "${argv[@]}"
    rc=$?
    printf '%s\n' "$rc" > "$share/status"
    exit "$rc"
}

if [ "${1:-}" = --guest ]; then
    [ $# -eq 2 ] || { echo "vm.sh: --guest is internal" >&2; exit 125; }
    guest_main "$2"
fi

# ---------------------------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------------------------
# 125 (like `timeout` and `docker run`) keeps vm.sh's own failures apart from CMD's statuses.
die() {
    printf 'vm.sh: error: %s\n' "$1" >&2
    [ -z "${2:-}" ] || printf 'vm.sh: hint: %s\n' "$2" >&2
    exit 125
}

# POSIX single quoting, which the guest's /bin/sh (dash) understands; see guest_main about argv.
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# With stdin closed (CI), the next file this script opens would become fd 0 by accident.
[ -e /proc/self/fd/0 ] || exec </dev/null

timeout_s=$VM_TIMEOUT
rw_repo=0
verbose=0
kernel_opt=
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) [ $# -ge 2 ] || die "--timeout needs a value" "scripts/vm.sh --help"
                   timeout_s=$2; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --kernel) [ $# -ge 2 ] || die "--kernel needs a value" "scripts/vm.sh --help"
                  kernel_opt=$2; shift 2
                  [ -n "$kernel_opt" ] || die "--kernel: no kernel version given" \
                      "scripts/setup.sh fetches the second kernel and records it in $VM_KERNEL2_FILE" ;;
        --rw-repo) rw_repo=1; shift ;;
        -v|--verbose) verbose=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1" "scripts/vm.sh --help" ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || die "no command given" "scripts/vm.sh [--timeout SECS] -- CMD [ARG...]"
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "--timeout: '$timeout_s' is not a positive number of seconds"

# The repo path ends up in qemu -fsdev options (',' separates them), in vng's name=path syntax
# ('=') and on the kernel command line (whitespace splits it): refuse what would be misparsed.
[[ $REPO =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "repo path '$REPO' has characters the VM cannot pass" \
    "clone the repo to a plain path such as /work/mptcpize-py"

KVER=$(cat "$VM_KVER_FILE" 2>/dev/null) || die "no VM kernel recorded in $VM_KVER_FILE" \
    "run scripts/setup.sh as root"
if [ -n "$kernel_opt" ] && [ "$kernel_opt" != "$KVER" ]; then
    # An unpacked kernel (scripts/vm-kernel2.sh): vng finds its modules beside the image and links
    # them as the guest's /lib/modules/KVER; it has no headers (bcc cannot run there, by design).
    [[ $kernel_opt =~ ^[A-Za-z0-9._+-]+$ ]] || die "--kernel: '$kernel_opt' is not a kernel version"
    KVER=$kernel_opt
    moddir=$VM_KERNELS_DIR/$KVER/lib/modules/$KVER
    kernel=$moddir/vmlinuz
    [ -r "$kernel" ] || die "no kernel $KVER under $VM_KERNELS_DIR" "run scripts/setup.sh as root"
else
    moddir=/lib/modules/$KVER
    kernel=/boot/vmlinuz-$KVER
    [ -r "$kernel" ] || die "VM kernel $kernel missing" "run scripts/setup.sh as root"
    [ -e "$moddir/build" ] || die "no headers for $KVER (bcc needs them in the guest)" \
        "run scripts/setup.sh as root"
fi
take_vm_lock vm.sh   # two VMs on two shared cores would each take twice as long, and time out
[ -x "$VENV/bin/vng" ] || die "virtme-ng missing ($VENV/bin/vng)" "run scripts/setup.sh as root"
# virtme's initramfs cannot insmod .ko.xz (setup.sh decompresses them once).
if grep -q -m1 '\.ko\.xz:' "$moddir/modules.dep" 2>/dev/null; then
    die "modules of $KVER are still xz-compressed" "run scripts/setup.sh as root"
fi
# Two TCG VMs on this machine's 2 cores slow each other down past any sensible timeout.
# (pgrep matches the 15-character comm, "qemu-system-x86", not the full binary name.)
if pgrep -x qemu-system-x86 >/dev/null 2>&1; then
    printf 'vm.sh: warning: another qemu is running; with 2 cores both VMs will crawl\n' >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmh-XXXXXX") || die "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
[[ $work =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "temporary directory '$work' has characters the VM cannot pass" \
    "set TMPDIR to a plain path"
# share: mounted read-write in the guest (argv in; started marker and CMD's status out).
share=$work/share
mkdir "$share"
printf '%s\0' "$@" > "$share/argv"

vng_args=(
    --run "$kernel"
    --disable-kvm                      # /dev/kvm exists but KVM fails on this machine: TCG
    --force-9p                         # virtiofsd fails here; trying it first costs ~3.5 s
    --cpus "$VM_CPUS" --memory "$VM_MEMORY"
    --cwd "$REPO"
    --append "modprobe.blacklist=$VM_MODPROBE_BLACKLIST"   # see config.sh: ~7 s less udev settle
    --rwdir "$share"
    --exec "exec /bin/bash $(sh_quote "$SELF") --guest $(sh_quote "$share")"
)
if [ "$rw_repo" = 1 ]; then
    vng_args+=(--rwdir "$REPO")          # 9p read-write: guest writes reach the host
else
    vng_args+=(--overlay-rwdir "$REPO")  # writable in the guest, discarded with the VM
fi
[ "$verbose" = 0 ] || vng_args+=(--verbose)

# vng finds its helper `virtme-run` through PATH.
export PATH="$VENV/bin:$PATH"

# qemu opens the guest's stdout/stderr as `-chardev file,path=/proc/self/fd/1` (and fd/2): on a
# regular file that reopens it with O_TRUNC at offset 0, so `vm.sh ... > log 2>&1` would clobber
# output (and a socket cannot be reopened at all). Hand vng pipes instead and copy them out.
mkfifo "$work/out" "$work/err"
cat "$work/out" & out_pid=$!
cat "$work/err" >&2 & err_pid=$!

# stdin: vng crashes with stdin closed ('NoneType' object has no attribute 'isatty'), and the
# guest's stdin is qemu's: keep it empty. `timeout` kills its whole process group (vng, qemu).
timeout --kill-after=10 "$timeout_s" "$VENV/bin/vng" "${vng_args[@]}" \
    </dev/null >"$work/out" 2>"$work/err" &
vm_pid=$!

# timeout lives in its own process group, so a Ctrl-C at the terminal does not reach it: forward
# INT/TERM/HUP as TERM (qemu powers off) and keep waiting until the VM is really gone.
signalled=0
forward() { signalled=$1; kill -TERM "$vm_pid" 2>/dev/null || true; }
trap 'forward 130' INT
trap 'forward 143' TERM
trap 'forward 129' HUP
while :; do
    got=$signalled
    rc=0
    wait "$vm_pid" || rc=$?
    # wait returns early when a trapped signal arrives; then the VM is still shutting down.
    if [ "$signalled" = "$got" ] || ! kill -0 "$vm_pid" 2>/dev/null; then break; fi
done
wait "$out_pid" "$err_pid" || true

if [ "$signalled" != 0 ]; then
    exit "$signalled"
fi
# The status written by the guest side is CMD's, whatever vng says (it also returns 124 or 255 when
# CMD does). Without it, 124/137 is `timeout` (TERM / TERM then KILL) and anything else a VM failure.
if [ -s "$share/status" ]; then
    read -r status < "$share/status"
    exit "$status"
elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    printf 'vm.sh: error: timed out after %ss: %s\n' "$timeout_s" "$*" >&2
    exit 124
elif [ -e "$share/started" ]; then
    die "the VM stopped while the command was running (vng status $rc)" \
        "a guest kernel panic or power-off? rerun with --verbose to see the guest console"
else
    die "the VM never got to run the command (vng status $rc)" \
        "rerun with --verbose to see qemu and the guest console"
fi
