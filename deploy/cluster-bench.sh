#!/usr/bin/env bash
# World chat over three nodes against one node with the same players, in
# one run: deliveries/s, server CPU per delivery per node, NATS's CPU, and
# the clients' local and cross-node latency. Release build; loopback; the
# nodes of a run share one SQLite file (player ids are unique across them).
#
#   deploy/cluster-bench.sh [--sessions 300] [--rate 2] [--duration 15s]
#
# CPU is read from /proc/<pid>/stat (user + system ticks) before and after
# the client run (connect, log in, enter, chat), for every node and for
# nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=300
rate=2
duration=15s
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) sessions="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
bin="${SERVERCORE:-target/release/servercore}"
[ -x "$bin" ] || cargo build --release -p servercore-cli --bin servercore
work="$(mktemp -d /tmp/servercore-cluster-bench.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# run NAME NODES: starts NODES nodes (with NATS when more than one), runs
# the clients, prints CPU seconds per process and the client's JSON summary.
run() {
    local name="$1" nodes="$2" nats_pid="" addrs=() node_pids=() before=() nats_before=0
    local port_base=$((7300 + nodes * 10)) nats_port=$((14300 + nodes))
    if [ "$nodes" -gt 1 ]; then
        nats-server -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
        nats_pid=$!; pids+=("$nats_pid"); wait_port "$nats_port"
    fi
    for n in $(seq 1 "$nodes"); do
        local port=$((port_base + n))
        local cluster=()
        [ "$nodes" -gt 1 ] && cluster=(--nats "nats://127.0.0.1:$nats_port" --node "n$n")
        "$bin" server --addr "127.0.0.1:$port" --db "$work/$name.db" \
            --max-conns-per-ip 0 --max-new-accounts-per-min 0 \
            "${cluster[@]}" >"$work/$name-n$n.out" 2>&1 &
        node_pids+=($!); pids+=($!); addrs+=("127.0.0.1:$port")
    done
    for n in $(seq 1 "$nodes"); do
        wait_port $((port_base + n)) || { cat "$work/$name-n$n.out" >&2; exit 1; }
    done
    sleep 1.5
    for pid in "${node_pids[@]}"; do before+=("$(ticks "$pid")"); done
    [ -n "$nats_pid" ] && nats_before=$(ticks "$nats_pid")
    local list; list="$(IFS=,; echo "${addrs[*]}")"
    "$bin" client --addr "$list" --sessions "$sessions" --rate "$rate" \
        --duration "$duration" --no-progress --json "$work/$name.json" >"$work/$name.table"
    echo "### $name: $nodes node(s)"
    cat "$work/$name.table"
    local i=0
    for pid in "${node_pids[@]}"; do
        local used=$(( $(ticks "$pid") - before[i] ))
        echo "cpu node$((i + 1)): $(awk -v t="$used" -v hz="$hz" 'BEGIN{printf "%.2f", t / hz}') s"
        i=$((i + 1))
    done
    if [ -n "$nats_pid" ]; then
        local used=$(( $(ticks "$nats_pid") - nats_before ))
        echo "cpu nats-server: $(awk -v t="$used" -v hz="$hz" 'BEGIN{printf "%.2f", t / hz}') s"
    fi
    for pid in "${node_pids[@]}" $nats_pid; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    pids=()
}

run single 1
run cluster 3
