"""The only code that touches the OS."""
