"""The client of the connection tests (tests/host and tests/vm test_connections.py), run as
`python -c PROGRAM HOST PORT SIZE`: it sends SIZE bytes, prints one JSON line (pid, local address,
SO_PROTOCOL), and keeps the connection open until its stdin closes."""

PROGRAM = """
import json, os, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(30)
s.connect((host, port))
left = size
while left:
    left -= s.send(b"x" * min(left, 1 << 16))
print(json.dumps({"pid": os.getpid(), "local": "%s:%d" % s.getsockname(),
                  "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}), flush=True)
sys.stdin.read()
"""
