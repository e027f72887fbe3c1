# README's two commands live here: `make demo` (the main job) and `make test` (everything, VM tier
# included). Both run scripts/setup.sh first, which installs what is missing (root, Debian 12).
VENV ?= /opt/mptcpize-py/venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup demo demo-vm test lint test-native test-vm test-systemd install-units bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The same demo inside the 6.12 VM, where the BPF backend works.
demo-vm: setup
	bash scripts/demo.sh --vm

# Unit tests (no root needed), host tests (root, this kernel), then the VM tier on the 6.12 kernel,
# where "BPF unusable" fails instead of skipping.
test: setup lint test-native test-vm test-systemd

# The static layer: ruff (pyproject.toml [tool.ruff]); the layout's boundaries are tests/unit/test_boundaries.py.
lint:
	$(VENV)/bin/ruff check mptcpize_py tests bench

test-native:
	$(PYTEST) tests/unit tests/host

test-vm:
	bash scripts/vm.sh --timeout 1500 -- env MPTCPIZE_REQUIRE_BPF=1 $(PYTEST) tests/vm tests/host/test_seccomp.py \
		tests/host/test_daemon_dry_run.py tests/host/test_btf_offsets.py

# Benchmarks, never part of `test`: ratios measured in one run, natively (seccomp, mptcpize) and in the
# VM (BPF, under the shared VM lock), written with machine, kernels and commands to docs/BENCHMARKS.md.
# About 15 minutes (plus any wait for the VM lock). Quick native socket() table: $(PY) bench/socket_cost.py
bench: setup
	$(PY) bench/run_all.py

# systemd integration in the 6.12 VM with the host's systemd as PID 1 (scripts/vm-systemd.sh): the
# hardened mptcpize-py.service (READY, watchdog, each capability), enable/disable with a real service.
test-systemd:
	bash scripts/vm-systemd.sh --timeout 900 -- env MPTCPIZE_REQUIRE_BPF=1 $(PYTEST) tests/systemd

# The daemon's unit, with ExecStart pointing at $(VENV), and its (empty) policy directory; then
# `systemctl daemon-reload` when systemd runs. DESTDIR= for packaging. Start it with
# `systemctl enable --now mptcpize-py`.
install-units:
	install -d -m 0755 $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/mptcpize-py/policy.d
	sed 's|/opt/mptcpize-py/venv/bin/mptcpize-py|$(VENV)/bin/mptcpize-py|' systemd/mptcpize-py.service \
		> $(DESTDIR)/etc/systemd/system/.mptcpize-py.service.tmp
	chmod 0644 $(DESTDIR)/etc/systemd/system/.mptcpize-py.service.tmp
	mv -f $(DESTDIR)/etc/systemd/system/.mptcpize-py.service.tmp $(DESTDIR)/etc/systemd/system/mptcpize-py.service
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
