"""The BPF program: the loader child, BTF, maps and layouts, the rewriter the daemon holds."""
