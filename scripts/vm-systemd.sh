#!/usr/bin/env bash
# Runs ONE command as root inside a throwaway VM (Debian's 6.12 kernel, like scripts/vm.sh) whose PID 1
# is the host's real systemd, and exits with that command's status. See `scripts/vm-systemd.sh --help`.
#
# Why not `vng --systemd`: it does not mount /sys in the new root (systemd then walks the host's /sys
# over 9p and hangs), and the host's /.dockerenv makes systemd believe it runs in a container, so the
# serial getty that carries vng's --exec never starts (/work/shared/vm-systemd.md has the details).
# Instead we let virtme-run (vng's back end) compute its qemu command line (`--dry-run`: 9p root, an
# initramfs with the virtio and 9p modules, serial ports), change only what decides who PID 1 is, and
# start qemu ourselves:
#
#   host:  vm-systemd.sh [--timeout S] -- CMD...   builds the share, the units and the qemu command
#   PID 1: vm-systemd.sh --pid1                     (kernel `init=`) mounts /proc /sys /dev /run, the
#          share and tmpfs overlays, writes the units, then execs /lib/systemd/systemd --unit=mzsd.target
#   unit:  vm-systemd.sh --runner                   (mzsd-runner.service, after basic.target) runs CMD
#          with the repo overlay as cwd, writes its status to the share, powers the VM off.
#
# One file, so the three halves agree on paths.
set -euo pipefail

case "${1:-}" in --pid1|--runner) SELF=${BASH_SOURCE[0]} ;; *) SELF=$(readlink -f "${BASH_SOURCE[0]}") ;; esac
REPO=${SELF%/*/*}
# shellcheck source=config.sh
. "$REPO/scripts/config.sh"

SHARE_TAG=mzsd.share          # 9p mount tag of the host's per-run share directory
G=/run/mzsd                   # guest: our state (share, overlay upper dirs); /run survives tmpfiles --boot
GSHARE=$G/share
TARGET=mzsd.target
RUNNER=mzsd-runner.service

usage() {
    cat <<EOF
usage: scripts/vm-systemd.sh [--timeout SECS] [--verbose] [--] CMD [ARG...]

Boots the Debian $(cat "$VM_KVER_FILE" 2>/dev/null || echo 6.12) kernel in qemu (TCG, $VM_CPUS vCPUs, $VM_MEMORY)
with the host's systemd as PID 1 (target $TARGET = basic.target + $RUNNER),
runs CMD as root in that service unit with $REPO as working directory, and exits with
CMD's status. systemctl, daemon-reload and journalctl work as on a booted system.

  --timeout SECS  end the VM after SECS seconds (default \$VM_TIMEOUT=$VM_TIMEOUT); exit 124
  --verbose, -v   show the guest console (kernel and systemd) on stderr

Guest: the host's root filesystem, read-only over 9p, with throwaway tmpfs overlays on /etc /usr
/var /root /home /opt /srv and the repo (so \`apt install ./PACKAGE.deb\` installs for this run
only), an empty /tmp; PATH starts with $VENV/bin; modules
($VM_MODULES) loaded. CMD's environment: HOME=/root,
MPTCPIZE_THROWAWAY_SYSTEMD=1, stdin empty; the host's is not passed in: use \`env VAR=value CMD\`.
Exit status: CMD's (127 not found); 124 timeout; 125 the script or the VM failed before CMD
finished (rerun with --verbose).
EOF
}

# ---------------------------------------------------------------------------------------------------
# PID 1 in the guest (before systemd).
# ---------------------------------------------------------------------------------------------------
pid1_fail() {
    # Nothing can report to the host at this point but the console: say it there, then stop the VM
    # (qemu runs with -no-reboot, so a reboot ends it; the host then reports 125).
    echo "vm-systemd.sh (pid 1): error: $*" > /dev/console 2>/dev/null || true
    echo b > /proc/sysrq-trigger 2>/dev/null || true
    exit 1
}

pid1_overlay() {  # DIR: a writable tmpfs-backed overlay on DIR (changes die with the VM)
    local d=$1 n=${1//\//_}
    [ -d "$d" ] || return 0
    mkdir -p "$G/ovl/$n/upper" "$G/ovl/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$G/ovl/$n/upper,workdir=$G/ovl/$n/work" "$d" \
        || pid1_fail "cannot overlay $d"
}

pid1_main() {
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    mount -t proc -o nosuid,nodev,noexec proc /proc || pid1_fail "cannot mount /proc"
    # Without a real sysfs systemd walks the host's /sys over 9p and blocks forever.
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || pid1_fail "cannot mount /sys"
    mountpoint -q /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || pid1_fail "cannot mount /dev"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || pid1_fail "cannot mount /run"
    mkdir -p "$GSHARE"
    mount -t 9p -o trans=virtio,version=9p2000.L,access=any,msize=524288 "$SHARE_TAG" "$GSHARE" \
        || pid1_fail "cannot mount the share ($SHARE_TAG)"
    : > "$GSHARE/booted"
    modprobe -q overlay || true   # a module in Debian's 6.12; the root's modules are decompressed
    local d
    for d in /etc /usr /var /root /home /opt /srv "$REPO"; do pid1_overlay "$d"; done
    # A fresh /tmp, not an overlay of the host's: systemd-tmpfiles --boot empties /tmp ("D /tmp"),
    # which on an overlay means walking the host's /tmp over 9p (48 s measured) to white it out.
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || pid1_fail "cannot mount /tmp"

    # The host's fstab and its enabled services are not this VM's business.
    : > /etc/fstab
    # The host image's policy-rc.d (exit 101: "no service starts during docker build") would keep
    # maintainer scripts from starting and stopping units (deb-systemd-invoke asks it): a booted
    # Debian machine has none, and the package tests install, upgrade and remove as on one.
    rm -f /usr/sbin/policy-rc.d
    local u
    for u in console-getty.service systemd-firstboot.service systemd-timesyncd.service \
             systemd-pstore.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
             e2scrub_all.timer fstrim.timer man-db.timer systemd-machine-id-commit.service; do
        ln -sfn /dev/null "/etc/systemd/system/$u"
    done

    # Our two units live in /run/systemd/system (runtime units), so /etc stays exactly the host's.
    mkdir -p /run/systemd/system
    cat > "/run/systemd/system/$TARGET" <<EOF
[Unit]
Description=vm-systemd.sh: basic system + the test command
Requires=basic.target $RUNNER
After=basic.target $RUNNER
AllowIsolate=yes
EOF
    cat > "/run/systemd/system/$RUNNER" <<EOF
[Unit]
Description=vm-systemd.sh test command
Requires=basic.target
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/bash $SELF --runner
Environment=HOME=/root
# Tests that change /etc and systemd's state (tests/systemd) refuse to run without this.
Environment=MPTCPIZE_THROWAWAY_SYSTEMD=1
StandardInput=null
StandardOutput=journal+console
TimeoutStartSec=infinity
# The runner powers the VM off itself; these make sure a broken runner cannot leave it running.
SuccessAction=poweroff-force
FailureAction=poweroff-force
EOF
    # The host image has /.dockerenv: an empty container= tells systemd (PID 1 trusts its own
    # environment) that this is not a container, so it runs udev and real gettys are not expected.
    export container=
    exec /lib/systemd/systemd --unit="$TARGET" || pid1_fail "cannot exec systemd"
}

# ---------------------------------------------------------------------------------------------------
# The test command, in mzsd-runner.service.
# ---------------------------------------------------------------------------------------------------
vport() {  # NAME -> /dev/vportNpM of the virtio serial port NAME (no udev symlinks needed)
    local f name
    for f in /sys/class/virtio-ports/*/name; do
        read -r name < "$f" || continue
        [ "$name" != "$1" ] || { f=${f%/name}; echo "/dev/${f##*/}"; return 0; }
    done
    return 1
}

runner_main() {
    local out err rc m
    local -a argv
    out=$(vport virtme.stdout) || out=/dev/console
    err=$(vport virtme.stderr) || err=/dev/console
    exec >"$out" 2>"$err" </dev/null
    : > "$GSHARE/started"
    mapfile -d '' -t argv < "$GSHARE/argv" && [ ${#argv[@]} -gt 0 ] || {
        echo "vm-systemd.sh (guest): error: cannot read the command from $GSHARE/argv" >&2
        echo 125 > "$GSHARE/status"
        systemctl poweroff --force --force >/dev/null 2>&1
    }
    export PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # shellcheck disable=SC2086  # VM_MODULES is a word list
    modprobe -q -a $VM_MODULES || for m in $VM_MODULES; do
        modprobe -q "$m" || echo "vm-systemd.sh (guest): warning: cannot load module $m" >&2
    done
    cd "$REPO"
    set +e
    if [[ ${argv[0]} != */* ]] && ! command -v -- "${argv[0]}" >/dev/null; then
        echo "vm-systemd.sh (guest): ${argv[0]}: command not found" >&2
        rc=127
    else
        "${argv[@]}"
        rc=$?
    fi
    # The share is 9p: the write has reached the host when echo returns.
    echo "$rc" > "$GSHARE/status"
    # Immediate power-off: nothing in this VM is worth an orderly shutdown (~10 s under TCG).
    systemctl poweroff --force --force >/dev/null 2>&1
    exit 0
}

case "${1:-}" in
    --pid1) pid1_main ;;
    --runner) runner_main ;;
esac

# ---------------------------------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------------------------------
die() {
    printf 'vm-systemd.sh: error: %s\n' "$1" >&2
    [ -z "${2:-}" ] || printf 'vm-systemd.sh: hint: %s\n' "$2" >&2
    exit 125
}

[ -e /proc/self/fd/0 ] || exec </dev/null

timeout_s=$VM_TIMEOUT
verbose=0
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) [ $# -ge 2 ] || die "--timeout needs a value" "scripts/vm-systemd.sh --help"
                   timeout_s=$2; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        -v|--verbose) verbose=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1" "scripts/vm-systemd.sh --help" ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || die "no command given" "scripts/vm-systemd.sh [--timeout SECS] -- CMD [ARG...]"
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "--timeout: '$timeout_s' is not a positive number of seconds"
[[ $REPO =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "repo path '$REPO' has characters the VM cannot pass" \
    "clone the repo to a plain path such as /work/mptcpize-py"
# The guest gets a fresh /tmp (and vng's tmpfs on /var/tmp): a checkout there, its venv's editable
# install and the Debian package `make deb` built in it would be invisible to the tests.
case $REPO/ in
    /tmp/*|/var/tmp/*) die "the systemd tier cannot run from a checkout in /tmp or /var/tmp ($REPO)" \
        "the guest's /tmp is a fresh tmpfs: clone the repo to a path such as /work/mptcpize-py or /root/mptcpize-py";;
esac

take_vm_lock vm-systemd.sh   # one VM at a time on the shared cores
KVER=$(cat "$VM_KVER_FILE" 2>/dev/null) || die "no VM kernel recorded in $VM_KVER_FILE" \
    "run scripts/setup.sh as root"
kernel=/boot/vmlinuz-$KVER
[ -r "$kernel" ] || die "VM kernel $kernel missing" "run scripts/setup.sh as root"
[ -x "$VENV/bin/virtme-run" ] || die "virtme-ng missing ($VENV/bin/virtme-run)" "run scripts/setup.sh as root"
[ -x /lib/systemd/systemd ] || die "no /lib/systemd/systemd on this host" "apt-get install systemd"
if grep -q -m1 '\.ko\.xz:' "/lib/modules/$KVER/modules.dep" 2>/dev/null; then
    die "modules of $KVER are still xz-compressed" "run scripts/setup.sh as root"
fi
if pgrep -x qemu-system-x86 >/dev/null 2>&1; then
    printf 'vm-systemd.sh: warning: another qemu is running; with 2 cores both VMs will crawl\n' >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmsd-XXXXXX") || die "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
[[ $work =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "temporary directory '$work' has characters qemu cannot pass" \
    "set TMPDIR to a plain path"
share=$work/share
mkdir "$share"
printf '%s\0' "$@" > "$share/argv"

export PATH="$VENV/bin:$PATH"
# virtme-run (vng's back end, which vm.sh's `vng --run` calls with these options) decides the machine:
# 9p root, an initramfs with the modules it needs (kept in $work/initrd), the serial ports. It only
# prints the qemu command here (--dry-run); vng itself cannot keep the initramfs, hence virtme-run.
"$VENV/bin/virtme-run" --kimg "$kernel" --mods auto --disable-kvm --force-9p \
    --cpus "$VM_CPUS" --memory "$VM_MEMORY" --kopt "modprobe.blacklist=$VM_MODPROBE_BLACKLIST,i6300esb" \
    --script-sh true --save-initramfs "$work/initrd" --show-command --dry-run \
    </dev/null >"$work/vng.out" 2>"$work/vng.err" \
    || die "virtme-run --dry-run failed: $(tail -n 3 "$work/vng.err")"

# Rewrite virtme-run's qemu command: our init (with --pid1) and our share; drop virtme's own init
# command (virtme.exec) and its return-code file. Output: the argv, NUL-separated.
"$VENV/bin/python" - "$work" "$SELF" "$share" "$SHARE_TAG" "$verbose" <<'EOF' \
    || die "cannot use virtme-run's qemu command"
import os, shlex, sys
work, self_, share, tag, verbose = sys.argv[1:]
lines = [l for l in open(f"{work}/vng.out").read().splitlines() if "qemu-system" in l and " -append " in l]
if len(lines) != 1:
    sys.exit("vm-systemd.sh: error: no qemu command in virtme-run --dry-run's output")
argv = shlex.split(lines[0])
out, i, ret_ids = [], 0, set()
while i < len(argv):
    a = argv[i]
    if a in ("-append", "-initrd", "-chardev", "-device") and i + 1 < len(argv):
        v = argv[i + 1]
        if a == "-append":
            # Keep virtme-run's kernel arguments but not its init and the virtme-ng-init settings.
            words = [w for w in shlex.split(v) if not w.startswith(("init=", "virtme.exec=", "virtme_chdir="))
                     and w not in ("quiet",) and not w.startswith("loglevel=")]
            v = " ".join(words) + ("" if verbose == "1" else " quiet loglevel=1 systemd.show_status=0")
            v += f" init={self_} -- --pid1"
        elif a == "-initrd" and v != f"{work}/initrd":
            sys.exit("vm-systemd.sh: error: virtme-run did not use the saved initramfs")
        elif a == "-chardev" and v.startswith("file,id=ret,"):
            path = v.split("path=", 1)[1]
            if os.path.basename(path).startswith("virtme_ret"):
                try:
                    os.unlink(path)   # virtme-run made it for a run it will not do
                except OSError:
                    pass
            ret_ids.add("ret")
            i += 2
            continue
        elif a == "-device" and any(f"chardev={r}" in v.split(",") for r in ret_ids):
            i += 2
            continue
        elif a == "-chardev" and v.startswith("file,id=console,") and verbose == "1":
            v = "file,id=console,path=/proc/self/fd/2"
        out += [a, v]
        i += 2
        continue
    out.append(a)
    i += 1
out += ["-fsdev", f"local,id=mzsdshare,path={share},security_model=none,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=mzsdshare,mount_tag={tag}"]
with open(f"{work}/qemu.argv", "wb") as f:
    f.write(b"".join(a.encode() + b"\0" for a in out))
EOF
mapfile -d '' -t qemu_argv < "$work/qemu.argv"
[ -s "$work/initrd" ] || die "virtme-run did not save an initramfs"

# qemu reopens /proc/self/fd/1 and /2 (O_TRUNC on a regular file): hand it pipes (see vm.sh).
mkfifo "$work/out" "$work/err"
cat "$work/out" & out_pid=$!
cat "$work/err" >&2 & err_pid=$!

timeout --kill-after=10 "$timeout_s" "${qemu_argv[@]}" </dev/null >"$work/out" 2>"$work/err" &
vm_pid=$!
signalled=0
forward() { signalled=$1; kill -TERM "$vm_pid" 2>/dev/null || true; }
trap 'forward 130' INT
trap 'forward 143' TERM
trap 'forward 129' HUP
while :; do
    got=$signalled
    rc=0
    wait "$vm_pid" || rc=$?
    if [ "$signalled" = "$got" ] || ! kill -0 "$vm_pid" 2>/dev/null; then break; fi
done
wait "$out_pid" "$err_pid" || true

[ "$signalled" = 0 ] || exit "$signalled"
if [ -s "$share/status" ]; then
    read -r status < "$share/status"
    exit "$status"
elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    printf 'vm-systemd.sh: error: timed out after %ss: %s\n' "$timeout_s" "$*" >&2
    exit 124
elif [ -e "$share/started" ]; then
    die "the VM stopped while the command was running (qemu status $rc)" "rerun with --verbose"
elif [ -e "$share/booted" ]; then
    die "systemd never started $RUNNER (qemu status $rc)" "rerun with --verbose to see the console"
else
    die "the VM never got to PID 1 (qemu status $rc)" "rerun with --verbose"
fi
