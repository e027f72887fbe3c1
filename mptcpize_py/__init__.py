"""mptcpize-py: make unmodified applications use Multipath TCP."""

__version__ = "0.1.0"
