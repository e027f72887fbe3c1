"""The only code that touches the OS: one module per surface."""
