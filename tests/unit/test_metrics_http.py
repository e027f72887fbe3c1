"""daemon --metrics-listen: the rendered metrics over HTTP, as a Prometheus server requests them."""

import urllib.error
import urllib.request

import pytest

from mptcpize_py import metrics
from mptcpize_py.daemon.http import CONTENT_TYPE, MetricsServer, parse_listen
from mptcpize_py.errors import UsageError


def test_parse_listen():
    assert parse_listen("127.0.0.1:9549") == ("127.0.0.1", 9549)
    assert parse_listen(":9549") == ("", 9549)
    assert parse_listen("[::1]:9549") == ("::1", 9549)
    for bad in ("9549", "host:", "host:0", "host:70000", "host:http"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_metrics_are_served_at_slash_metrics_only():
    text = metrics.render(None)
    server = MetricsServer(("127.0.0.1", 0), lambda: text).start()
    try:
        base = f"http://127.0.0.1:{server.address[1]}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert r.read().decode() == text == ("# HELP mptcpize_daemon_up 1 when the mptcpize-py daemon "
                                                 "answered on its control socket, 0 when none runs.\n"
                                                 "# TYPE mptcpize_daemon_up gauge\nmptcpize_daemon_up 0\n")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/other", timeout=10)
        assert e.value.code == 404
    finally:
        server.close()


def test_a_failing_render_is_a_500_and_the_server_goes_on():
    calls = []

    def render() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a metrics bug")
        return "ok\n"
    server = MetricsServer(("127.0.0.1", 0), render).start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}/metrics"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 500
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"ok\n"
    finally:
        server.close()
