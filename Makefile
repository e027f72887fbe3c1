# README's two commands live here: `make demo` (the main job) and `make test` (everything, VM tier
# included). Both run scripts/setup.sh first, which installs what is missing (root, Debian 12).
VENV ?= /opt/mptcpize-py/venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup demo demo-vm test lint test-native test-container test-vm test-vm-kernel2 test-systemd install-units bench deb image bpf clean-bpf shim

# The BPF program compiled once (CO-RE): clang -target bpf against a vmlinux.h dumped from this
# machine's kernel BTF (only type definitions: every kernel struct access is a relocation that libbpf
# resolves against the running kernel's BTF at load time), with libbpf's headers (libbpf-dev). Two
# objects beside the source, shipped in the wheel and the Debian package: the program on
# update_socket_protocol, and the dry run's (the socket() tracepoint). Debug info stripped, BTF kept.
CLANG ?= clang
LLVM_STRIP ?= llvm-strip
BPFTOOL ?= bpftool
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux
BPF_BUILD := build/bpf
BPF_OBJS := bpf/mptcpize.bpf.o bpf/mptcpize-dry-run.bpf.o
BPF_SRC := bpf/mptcpize.bpf.c bpf/mptcpize.h bpf/loaders.h $(BPF_BUILD)/vmlinux.h
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_x86 -DMPTCPIZE_LIBBPF -I$(BPF_BUILD) -Ibpf -Wall -Werror

bpf: $(BPF_OBJS)

$(BPF_BUILD)/vmlinux.h:
	mkdir -p $(BPF_BUILD)
	$(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $@.tmp
	mv $@.tmp $@

bpf/mptcpize.bpf.o: $(BPF_SRC)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $(BPF_BUILD)/$(@F)
	$(LLVM_STRIP) -g $(BPF_BUILD)/$(@F) -o $@

bpf/mptcpize-dry-run.bpf.o: $(BPF_SRC)
	$(CLANG) $(BPF_CFLAGS) -DMPTCPIZE_DRY_RUN -c $< -o $(BPF_BUILD)/$(@F)
	$(LLVM_STRIP) -g $(BPF_BUILD)/$(@F) -o $@

clean-bpf:
	rm -f $(BPF_OBJS) $(BPF_BUILD)/*

# The seccomp backend's preloaded shim (shim/mptcpize-shim.c), beside the package's modules: a checkout
# builds it here (scripts/setup.sh runs this), the wheel and the .deb at build time (setup.py).
SHIM := mptcpize_py/lib/libmptcpize-shim.so
CC ?= cc
SHIM_CFLAGS := -O2 -g -Wall -Wextra -fPIC -shared -D_FORTIFY_SOURCE=2 -fstack-protector-strong -Wl,-z,relro,-z,now

shim: $(SHIM)

$(SHIM): shim/mptcpize-shim.c
	mkdir -p $(dir $@)
	$(CC) $(SHIM_CFLAGS) -o $@ $< -lpthread

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The same demo inside the 6.12 VM, where the BPF backend works.
demo-vm: setup
	bash scripts/demo.sh --vm

# Unit tests (no root needed), host tests (root, this kernel), then the VM tier on the 6.12 kernel,
# where "BPF unusable" fails instead of skipping.
test: setup lint test-native test-container test-vm test-systemd

# The static layer: ruff and mypy (pyproject.toml [tool.ruff], [tool.mypy]); the layout's boundaries
# (owners, layers, no import circles) are tests/unit/test_boundaries.py.
lint:
	$(VENV)/bin/ruff check mptcpize_py tests bench
	$(VENV)/bin/mypy

test-native: bpf shim
	$(PYTEST) tests/unit tests/host

# The container image (`make image`) run natively with podman (runc) the way deploy/kubernetes/'s
# DaemonSet runs it, in the dry-run mode this kernel allows; the manifests rendered (kubectl kustomize)
# and validated offline against Kubernetes 1.32's schemas. The VM tier runs the image's root
# filesystem with runc on the kernel with the hook (tests/vm/test_container.py).
test-container: image
	$(PYTEST) tests/container

# The image (build/mptcpize-py-image.tar, an OCI archive) and its runc bundle for the VM tier
# (/opt/mptcpize-py/image-bundle: the guest sees /opt).
test-vm: bpf shim image
	bash scripts/image-bundle.sh build/mptcpize-py-image.tar >/dev/null
	bash scripts/vm.sh --timeout 1500 -- env MPTCPIZE_REQUIRE_BPF=1 $(PYTEST) tests/vm tests/host/test_seccomp.py \
		tests/host/test_daemon_dry_run.py tests/host/test_btf_offsets.py
	$(MAKE) --no-print-directory test-vm-kernel2

# The same object on a second kernel, the newest Debian's registry offers (scripts/vm-kernel2.sh
# fetches and unpacks it; no headers there): a subset of the VM tier. The shipped object loads with
# libbpf, no headers and no compiler library (test_prebuilt, minus bcc's own test); selection by exe,
# cgroup and run tree, the netns guard, one upgrade per kind (run, daemon, the maps), a real
# two-path transfer, and the BTF offsets the program uses.
VM_KERNEL2_TESTS := tests/vm/test_prebuilt.py \
	--deselect tests/vm/test_prebuilt.py::test_the_bcc_loader_still_compiles_and_upgrades_the_same_source \
	tests/vm/test_bpf_run.py::test_check_reports_bpf_backend \
	tests/vm/test_bpf_run.py::test_matrix_shell_descendants_and_static_binary \
	tests/vm/test_bpf_run.py::test_mptcp_disabled_netns_gets_working_tcp \
	tests/vm/test_bpf_run.py::test_two_path_transfer_uses_both_paths \
	tests/vm/test_bpf_selection.py::test_exe_identity_cgroup_ancestors_deny_and_netns \
	tests/vm/test_daemon.py::test_exe_cgroup_and_deny \
	tests/host/test_btf_offsets.py
test-vm-kernel2: bpf
	kver=$$(cat /opt/mptcpize-py/vm-kernel2-version) && bash scripts/vm.sh --kernel "$$kver" --timeout 900 -- \
		sh -c 'echo "kernel under test: $$(uname -r)"; [ "$$(uname -r)" = "$$0" ] || exit 1; exec "$$@"' "$$kver" \
		env MPTCPIZE_REQUIRE_BPF=1 $(PYTEST) $(VM_KERNEL2_TESTS)

# Benchmarks, never part of `test`: ratios measured in one run, natively (seccomp, mptcpize) and in the
# VM (BPF, under the shared VM lock), written with machine, kernels and commands to docs/BENCHMARKS.md.
# About 15 minutes (plus any wait for the VM lock). Quick native socket() table: $(PY) bench/socket_cost.py
bench: setup
	$(PY) bench/run_all.py

# systemd integration in the 6.12 VM with the host's systemd as PID 1 (scripts/vm-systemd.sh): the
# Debian package that `make deb` builds, installed in the VM's throwaway /usr, /etc and /var, and its
# hardened mptcpize-py.service (READY, watchdog, each capability), enable/disable with a real service,
# apt remove and purge. Nothing there runs this checkout's code but pytest and its fixtures. The
# timeout is a safety net (the package's life cycle adds installs and two daemon starts under TCG;
# tests/systemd/test_no_compiler.py's apt purge of bcc, compilers, LLVM and headers took ~22 min).
test-systemd:
	deb=$$(bash scripts/deb.sh) && bash scripts/vm-systemd.sh --timeout 3600 -- \
		env MPTCPIZE_REQUIRE_BPF=1 MPTCPIZE_DEB="$$deb" $(PYTEST) tests/systemd

# The Debian package, built with debian/ (debhelper, dh-python) from this working tree in a copy under
# build/, checked by lintian (errors fail): build/mptcpize-py_VERSION_ARCH.deb (its path is the last
# line of output). Installs missing build tools with apt.
deb:
	bash scripts/deb.sh

# The container image: Debian 13 (trixie) made by mmdebstrap, the package `make deb` builds installed
# into it by apt, one layer committed by buildah with SOURCE_DATE_EPOCH timestamps, written as an OCI
# archive: build/mptcpize-py-image.tar (scripts/image.sh; deploy/kubernetes/ runs it).
image:
	bash scripts/image.sh

# Without the Debian package: the daemon's unit (it writes its Prometheus textfile itself), with ExecStart=
# pointing at $(VENV) instead of /usr/bin, and the (empty) policy directory; then `systemctl
# daemon-reload` when systemd runs. DESTDIR= to stage them elsewhere. Start the daemon with
# `systemctl enable --now mptcpize-py`. (The VENV's checkout must not be under /home or /root: the
# unit has ProtectHome=yes.)
UNITS := mptcpize-py.service
install-units:
	install -d -m 0755 $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/mptcpize-py/policy.d
	for u in $(UNITS); do \
		sed 's|/usr/bin/mptcpize-py|$(VENV)/bin/mptcpize-py|' systemd/$$u \
			> $(DESTDIR)/etc/systemd/system/.$$u.tmp && \
		chmod 0644 $(DESTDIR)/etc/systemd/system/.$$u.tmp && \
		mv -f $(DESTDIR)/etc/systemd/system/.$$u.tmp $(DESTDIR)/etc/systemd/system/$$u || exit 1; \
	done
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
