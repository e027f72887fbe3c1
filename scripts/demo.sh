#!/usr/bin/env bash
# `make demo`: two network namespaces joined by two 20 Mbit/s paths; iperf3 plain TCP, then the same
# unmodified iperf3 (server and client) under `mptcpize-py run`. Prints both throughputs, the ratio
# and the evidence that the second path carried a subflow (MP_JOIN counters, MPTCP endpoints).
# Nothing sets MPTCP endpoints or limits by hand: mptcpize-py's path manager does, from a [paths]
# table (`mptcpize-py paths --apply --follow`, what the daemon runs beside its program), and removes
# them when the demo ends.
# Runs here when `mptcpize-py check` says run can upgrade sockets (BPF, else seccomp), otherwise
# inside the 6.12 VM; `demo.sh --vm` always uses the VM (the BPF backend on a kernel with the hook).
# DEMO_BACKEND=auto|bpf|seccomp picks run's backend.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh
export PATH="$VENV/bin:$PATH"

RATE=${DEMO_RATE:-20mbit}
SECS=${DEMO_SECONDS:-8}
CLI=mzd-cli SRV=mzd-srv

BACKEND=${DEMO_BACKEND:-auto}
case ${1:-} in
    --here) ;;
    --vm) exec bash scripts/vm.sh --timeout 900 -- env DEMO_BACKEND="$BACKEND" bash scripts/demo.sh --here ;;
    *)  if mptcpize-py check >/dev/null 2>&1; then
            exec bash scripts/demo.sh --here
        fi
        echo "demo: no backend can upgrade sockets on this kernel (see 'mptcpize-py check'): running in the 6.12 VM" >&2
        exec bash scripts/vm.sh --timeout 900 -- env DEMO_BACKEND="$BACKEND" bash scripts/demo.sh --here ;;
esac

WORK=$(mktemp -d /tmp/mzd-demo.XXXXXX)
PATHS_PID=
cleanup() {
    if [ -n "$PATHS_PID" ]; then   # it removes the endpoints it added
        kill -TERM "$PATHS_PID" 2>/dev/null && wait "$PATHS_PID" 2>/dev/null || true
    fi
    ip netns del "$CLI" 2>/dev/null || true; ip netns del "$SRV" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns del "$CLI" 2>/dev/null || true; ip netns del "$SRV" 2>/dev/null || true
ip netns add "$CLI"
ip netns add "$SRV"
for i in 1 2; do
    ip -n "$CLI" link add "c$i" type veth peer name "s$i" netns "$SRV"
    ip -n "$CLI" addr add "10.200.$i.1/24" dev "c$i"
    ip -n "$SRV" addr add "10.200.$i.2/24" dev "s$i"
    ip -n "$CLI" link set "c$i" up
    ip -n "$SRV" link set "s$i" up
    # Each path is a 20 Mbit/s bottleneck in the direction the data flows (client -> server).
    ip netns exec "$CLI" tc qdisc add dev "c$i" root tbf rate "$RATE" burst 32kbit latency 100ms
done
ip -n "$CLI" link set lo up
ip -n "$SRV" link set lo up

# The path manager's policy: the client gets a `subflow` endpoint per address (the one on path 2 opens
# the second subflow), the server a `signal` one (announced to clients that accept announcements;
# this one ignores them, which keeps it to one subflow per path). The demo's own runtime directory
# (MPTCPIZE_CONTROL: where paths.json lives) keeps it apart from a daemon that may run here.
mkdir -m 755 "$WORK/policy.d"
chmod 755 "$WORK"
cat > "$WORK/policy.d/10-demo.toml" <<EOF
[netns]
names = ["$CLI", "$SRV"]

[paths]
role = "none"          # this machine's own namespace is not the demo's business
subflows = 2
add_addr_accepted = 2

[paths.netns.$CLI]
role = "client"
add_addr_accepted = 0

[paths.netns.$SRV]
role = "server"
EOF
chmod 644 "$WORK/policy.d/10-demo.toml"
MPTCPIZE_CONTROL=$WORK/run/control mptcpize-py paths --apply --follow --policy-dir "$WORK/policy.d" \
    >/dev/null 2>"$WORK/paths.log" &
PATHS_PID=$!
for _ in $(seq 100); do   # addresses appear, links get their carrier: it follows the events
    ip -n "$CLI" mptcp endpoint | grep -q 10.200.2.1 && ip -n "$SRV" mptcp endpoint | grep -q 10.200.2.2 && break
    kill -0 "$PATHS_PID" 2>/dev/null || { cat "$WORK/paths.log" >&2; exit 1; }
    sleep 0.1
done
echo "== MPTCP endpoints and limits, set up by mptcpize-py's path manager ([paths] in $WORK/policy.d)"
sed 's/^mptcpize-py: info: paths: /   /' "$WORK/paths.log"

wait_listening() {  # wait (bounded) until something listens on 5201 in $SRV
    for _ in $(seq 600); do
        ip netns exec "$SRV" ss -Hltn 'sport = :5201' 2>/dev/null | grep -q . && return 0
        sleep 0.2
    done
    echo "demo: iperf3 server did not start" >&2
    return 1
}

mbits() {  # iperf3 -J output on stdin -> received Mbit/s
    "$VENV/bin/python" -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6, 1))'
}

echo "== plain TCP: iperf3 over path 1 ($RATE), ${SECS}s"
ip netns exec "$SRV" iperf3 -s -1 >/dev/null &
server=$!
wait_listening
plain=$(ip netns exec "$CLI" iperf3 -c 10.200.1.2 -t "$SECS" -J | mbits)
wait "$server"
echo "   $plain Mbit/s"

echo "== MPTCP: the same iperf3 under 'mptcpize-py run --backend $BACKEND' (server and client)"
ip netns exec "$CLI" nstat -n >/dev/null
ip netns exec "$SRV" nstat -n >/dev/null
ip netns exec "$SRV" mptcpize-py run -v --backend "$BACKEND" iperf3 -s -1 >/dev/null 2>"/tmp/mzd-server.log" &
server=$!
wait_listening
mptcp=$(ip netns exec "$CLI" mptcpize-py run -v --backend "$BACKEND" iperf3 -c 10.200.1.2 -t "$SECS" -J 2>/tmp/mzd-client.log | mbits)
wait "$server"
echo "   $mptcp Mbit/s"
sed 's/^/   client: /' /tmp/mzd-client.log
sed 's/^/   server: /' /tmp/mzd-server.log

echo "== evidence"
MPTCPIZE_CONTROL=$WORK/run/control mptcpize-py paths --policy-dir "$WORK/policy.d" --netns "$CLI" \
    | grep -v '^  note: ' | sed 's/^/   /'
ip netns exec "$CLI" nstat -az MPTcpExtMPCapableSYNTX MPTcpExtMPJoinSynTx MPTcpExtMPJoinSynAckRx | sed 's/^/   client /'
ip netns exec "$SRV" nstat -az MPTcpExtMPCapableSYNRX MPTcpExtMPJoinSynRx MPTcpExtMPJoinAckRx | sed 's/^/   server /'
joins=$(ip netns exec "$SRV" nstat -az MPTcpExtMPJoinAckRx | awk '/MPJoinAckRx/ {print $2}')
ratio=$("$VENV/bin/python" -c "print(f'{$mptcp/$plain:.2f}')")
echo
echo "plain TCP ${plain} Mbit/s | MPTCP ${mptcp} Mbit/s | ratio ${ratio} | MP_JOIN acked by server: ${joins}"
[ "${joins:-0}" -gt 0 ] || { echo "demo: no MP_JOIN: the second path was not used" >&2; exit 1; }
