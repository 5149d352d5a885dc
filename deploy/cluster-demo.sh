#!/usr/bin/env bash
# A local servercore cluster in one command: starts nats-server, three game
# server nodes on loopback (one shared SQLite file, or PostgreSQL with
# --db postgres://...) sharing one world (--world-nodes node1,node2,node3:
# three vertical zones), then dummy clients spread over the three that walk
# the world, cross the zones' borders (each crossing a hand-over the
# client follows by itself) and chat for a while, prints the clients'
# report (transfers and their time, local against cross-node deliveries)
# and each node's final counters, and stops everything. Each node serves
# its status page (the zones and each node's players) on --admin: the
# demo prints the addresses.
#
#   deploy/cluster-demo.sh [--sessions N] [--rate R] [--move-rate M]
#                          [--duration 10s] [--db PATH|URL]
#                          [--nats-port P] [--base-port P] [--separate]
#
# --separate: each node runs a world of its own (no zones, no hand-overs).
#
# R chats and M moves per second per client (defaults 2 and 5).
#
# Needs nats-server on the PATH (apt-get install nats-server). Uses
# $SERVERCORE as the binary, else target/release/servercore (built if
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=300
rate=2
move_rate=5
duration=10s
db=""
nats_port=4222
base_port=7101
separate=0
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) sessions="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --move-rate) move_rate="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --db) db="$2"; shift 2 ;;
        --nats-port) nats_port="$2"; shift 2 ;;
        --base-port) base_port="$2"; shift 2 ;;
        --separate) separate=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

bin="${SERVERCORE:-target/release/servercore}"
if [ ! -x "$bin" ]; then
    echo "== building $bin"
    cargo build --release -p servercore-cli --bin servercore
fi
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }

work="$(mktemp -d /tmp/servercore-cluster-demo.XXXXXX)"
[ -n "$db" ] || db="$work/game.db"
world=()
if [ "$separate" = 0 ]; then
    head -c 48 /dev/urandom | base64 >"$work/cluster.secret"
    world=(--world-nodes node1,node2,node3 --cluster-secret "$work/cluster.secret")
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

echo "== nats-server on 127.0.0.1:$nats_port"
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port"

addrs=()
for n in 1 2 3; do
    port=$((base_port + n - 1))
    echo "== node$n on 127.0.0.1:$port"
    "$bin" --log info server --addr "127.0.0.1:$port" --db "$db" \
        --nats "nats://127.0.0.1:$nats_port" --node "node$n" \
        --max-conns-per-ip 0 --max-new-accounts-per-min 0 \
        --admin "127.0.0.1:$((base_port + 100 + n - 1))" "${world[@]}" \
        >"$work/node$n.out" 2>"$work/node$n.log" &
    pids+=($!)
    addrs+=("127.0.0.1:$port")
done
for n in 1 2 3; do wait_port $((base_port + n - 1)); done
# Let the nodes hear each other's first heartbeats (and agree on the zones).
sleep 1.5
for n in 1 2 3; do
    echo "   node$n status page: http://127.0.0.1:$((base_port + 100 + n - 1))/"
done

echo "== $sessions dummy clients over ${addrs[*]}: $move_rate moves and $rate chats/s each, for $duration"
list="$(IFS=,; echo "${addrs[*]}")"
"$bin" client --addr "$list" --sessions "$sessions" --scenario move \
    --move-rate "$move_rate" --rate "$rate" --duration "$duration" --no-progress

echo "== nodes"
for pid in "${pids[@]:1}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
for n in 1 2 3; do
    echo "-- node$n"
    grep -E "^(stopped|cluster):" "$work/node$n.out" || tail -5 "$work/node$n.log"
done
pids=("${pids[0]}")
