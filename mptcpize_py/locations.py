"""Where mptcpize-py keeps things on the system: one home for each path, imported by whoever needs it
(cheap to import: the command line reads its defaults here without loading the modules behind them)."""

from pathlib import Path

POLICY_DIR = Path("/etc/mptcpize-py/policy.d")      # daemon --policy-dir, enable, disable
CONTROL_SOCKET = Path("/run/mptcpize-py/control")   # the daemon's control socket
MERGED_HEADERS_DIR = Path("/run/mptcpize-py/headers")   # kernel headers assembled for bcc
# node_exporter's textfile collector directory as Debian's prometheus-node-exporter sets it (its
# --collector.textfile.directory default; the package ships it): daemon --metrics-dir
TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")
