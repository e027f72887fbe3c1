"""`daemon --metrics-listen ADDR:PORT`: the metrics (metrics.render) at http://ADDR:PORT/metrics.

In a cluster Prometheus scrapes pods, not node_exporter's textfile directory. The standard library's
http.server, not python3-prometheus-client: the families are already rendered by metrics.render (the
textfile's text, which tests pin down), and the client library would need them rebuilt as collectors
for the same bytes, plus one more dependency in the image. One thread per request (a scrape renders
a status: a few ms); the server runs in its own daemon thread and never touches the BPF maps beyond
what status() reads under the daemon's locks.
"""

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mptcpize_py.errors import UsageError

log = logging.getLogger("mptcpize_py.daemon")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(value: str) -> tuple[str, int]:
    """"ADDR:PORT", "[V6ADDR]:PORT" or ":PORT" (every address) -> (host, port); UsageError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-listen {value!r}: not ADDR:PORT", hint="e.g. --metrics-listen :9549")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class MetricsServer:
    def __init__(self, listen: tuple[str, int], render: Callable[[], str]):
        self.render = render
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:   # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = outer.render().encode()
                except Exception:   # a metrics bug must not take the daemon down: 500, logged
                    log.exception("metrics: rendering for an HTTP scrape failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
                pass   # one line per scrape would flood the journal

        server = type("Server", (ThreadingHTTPServer,), {"address_family": _family(listen[0]),
                                                          "daemon_threads": True})
        self.httpd = server(listen, Handler)
        self.address = self.httpd.server_address
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> "MetricsServer":
        self.thread.start()
        log.info("metrics: serving http://%s:%d/metrics", *self.address[:2])
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _family(host: str) -> int:
    import socket
    return socket.AF_INET6 if ":" in host else socket.AF_INET
