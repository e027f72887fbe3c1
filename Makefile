# README's two commands live here: `make demo` (the main job) and `make test` (everything, VM tier
# included). Both run scripts/setup.sh first, which installs what is missing (root, Debian 12).
VENV ?= /opt/mptcpize-py/venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup demo demo-vm test test-native test-vm bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The same demo inside the 6.12 VM, where the BPF backend works.
demo-vm: setup
	bash scripts/demo.sh --vm

# Unit tests (no root needed), host tests (root, this kernel), then the VM tier on the 6.12 kernel,
# where "BPF unusable" fails instead of skipping.
test: setup test-native test-vm

test-native:
	$(PYTEST) tests/unit tests/host

test-vm:
	bash scripts/vm.sh --timeout 1500 -- env MPTCPIZE_REQUIRE_BPF=1 $(PYTEST) tests/vm tests/host/test_seccomp.py \
		tests/host/test_daemon_dry_run.py tests/host/test_btf_offsets.py

bench: setup
	$(PY) bench/socket_cost.py
