# Shared settings for the project's scripts (sourced, not run).
STATE_DIR=${STATE_DIR:-/opt/mptcpize-py}
VENV=${VENV:-$STATE_DIR/venv}
VM_KVER_FILE=$STATE_DIR/vm-kernel-version
VNG_VERSION=${VNG_VERSION:-1.42}
