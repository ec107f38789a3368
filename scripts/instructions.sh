#!/usr/bin/env bash
# Instructions a proxy spends per proxied request, per WebSocket session
# or per new client connection, counted by callgrind: unlike time, the
# count is repeatable on a shared or noisy machine, so it shows what one
# change did to the hot path, and how switchyard compares with nginx and
# HAProxy doing the same work.
#
#   scripts/instructions.sh [request|concurrent|websocket|sessions|messages|burst] [COUNT] [BINARY|nginx|haproxy]
#
# Starts the benchmark backend and runs, under callgrind pinned to one CPU
# (so with the runtime a pinned benchmark run has), switchyard's BINARY
# (default: a fresh release build) or nginx or HAProxy configured as the
# benchmark runs them (`loadgen config`; nginx without its master process,
# so that the one serving process is counted). After a warm-up it counts
# COUNT exchanges on one client connection (request), COUNT exchanges
# spread over 64 client connections (INSTRUCTIONS_CONNECTIONS=N for
# another number) with one request in flight on each
# (concurrent: the proxy is never idle, so the runtime's per-wakeup work is
# shared by many requests, as in the benchmark's CPU-bound figures), COUNT
# sessions one after another (websocket: connect, 101, one message,
# close), COUNT such sessions with 16 in flight at a time (sessions: as
# the benchmark's sessions figure runs them, so that the proxy's wake-ups
# are shared as there; INSTRUCTIONS_CONNECTIONS=N for another number),
# COUNT echoes of a small WebSocket message over 16 tunnels opened before
# the count, one message in flight on each (messages: the steady cost of a
# long-lived WebSocket, one message each way per echo;
# INSTRUCTIONS_CONNECTIONS=N for another number of tunnels), or
# COUNT connections opened at once with one request each (burst, as the
# benchmark's burst figure; most of them need a new backend connection
# too). User-space instructions only: the kernel's work is not counted.
# Installs valgrind, python3, nginx and HAProxy (Debian packages) when
# missing and needed.
# With INSTRUCTIONS_DUMP=FILE the callgrind profile is kept there, for
# `callgrind_annotate --inclusive=yes FILE` to say where they go.
set -euo pipefail
cd "$(dirname "$0")/.."

workload=${1:-request}
count=${2:-}
if [ -z "$count" ]; then
    if [ "$workload" = burst ]; then count=256; else count=3000; fi
fi
binary=${3:-}
case "$workload" in request | concurrent | websocket | sessions | messages | burst) ;; *) echo "usage: $0 [request|concurrent|websocket|sessions|messages|burst] [COUNT] [BINARY|nginx|haproxy]" >&2; exit 2 ;; esac
case "$workload" in sessions | messages) connections=${INSTRUCTIONS_CONNECTIONS:-16} ;; *) connections=${INSTRUCTIONS_CONNECTIONS:-64} ;; esac

need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release -q -p switchyard-bench
if [ -z "$binary" ]; then
    cargo build --release -q -p switchyard
    binary=target/release/switchyard
fi

dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/manifests"

target/release/loadgen backend --addr 127.0.0.1:0 >"$dir/backend.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q 127.0.0.1 "$dir/backend.out" && break; sleep 0.1; done
backend_port=$(grep -oE '127\.0\.0\.1:[0-9]+' "$dir/backend.out" | head -1 | cut -d: -f2)

case "$binary" in
nginx | haproxy)
    # The other proxies as the benchmark runs them, for a count of their
    # own on the same workload: nginx in one process (no master).
    command -v "$binary" >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$binary" >/dev/null
    }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$dir/nginx/logs" "$dir/nginx/tmp"
    target/release/loadgen config "$binary" --backend "127.0.0.1:$backend_port" --port "$port" \
        --dir "$dir/nginx" >"$dir/proxy.conf"
    if [ "$binary" = nginx ]; then
        run=(nginx -g 'master_process off;' -p "$dir/nginx" -c "$dir/proxy.conf")
    else
        run=(haproxy -db -f "$dir/proxy.conf")
    fi
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "${run[@]}" >"$dir/proxy.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \
            "$port" 2>/dev/null && break
        sleep 0.1
    done
    ;;
*)
    target/release/loadgen config switchyard --backend "127.0.0.1:$backend_port" \
        >"$dir/manifests/bench.yaml"
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$binary" run --manifests "$dir/manifests" --http-addr 127.0.0.1:0 \
        --admin-addr 127.0.0.1:0 --access-log false --log-level warn \
        >"$dir/switchyard.out" 2>"$dir/switchyard.err" &
    pids+=($!)
    for _ in $(seq 300); do grep -q "http=" "$dir/switchyard.out" 2>/dev/null && break; sleep 0.1; done
    port=$(grep -oE 'http=127\.0\.0\.1:[0-9]+' "$dir/switchyard.out" | cut -d: -f2)
    ;;
esac

# The driver: zero the counters after the warm-up, dump after the count.
python3 - "$port" "$count" "$workload" "$connections" <<'PY'
import socket, subprocess, sys

port, count, workload, connections = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def read_exactly(s, n, buf=b""):
    while len(buf) < n:
        more = s.recv(n - len(buf))
        if not more:
            raise SystemExit("connection closed early")
        buf += more
    return buf

def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = s.recv(4096)
        if not more:
            raise SystemExit("connection closed before a response head")
        buf += more
    return buf.split(b"\r\n\r\n", 1)

GET = b"GET /small HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: instructions\r\nAccept: */*\r\n\r\n"
UPGRADE = (b"GET /echo HTTP/1.1\r\nHost: bench.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
FRAME = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(c ^ k for c, k in zip(b"hello", b"\x01\x02\x03\x04\x01"))
CLOSE = bytes([0x88, 0x80, 1, 2, 3, 4])
client = connect() if workload == "request" else None

def request():
    global client
    client.sendall(GET)
    head, body = read_head(client)
    lines = [line.lower() for line in head.split(b"\r\n")]
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
    read_exactly(client, length, body)
    if b"connection: close" in lines:
        # nginx ends a keep-alive connection after 1000 requests (its
        # keepalive_requests): the next one opens a new connection, which
        # is counted as that proxy's cost.
        client.close()
        client = connect()

def session():
    s = connect()
    s.sendall(UPGRADE)
    head, rest = read_head(s)
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(head.decode(errors="replace"))
    s.sendall(FRAME)
    read_exactly(s, len(FRAME), rest)
    s.sendall(CLOSE)
    read_exactly(s, len(CLOSE))
    s.shutdown(socket.SHUT_WR)
    s.recv(64)
    s.close()

def whole_response(seen):
    """Whether `seen` holds a response head and all of its body."""
    head, found, body = seen.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    return bool(found) and length is not None and len(body) >= length

def burst(n):
    """n connections at once, one GET each, all in flight together."""
    import selectors
    waiting = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        waiting.register(s, selectors.EVENT_WRITE, b"")
    left = n
    while left:
        for key, events in waiting.select(10):
            s = key.fileobj
            if events & selectors.EVENT_WRITE:
                s.sendall(GET)
                waiting.modify(s, selectors.EVENT_READ, b"")
                continue
            more = s.recv(65536)
            if not more:
                raise SystemExit("connection closed before its response")
            seen = key.data + more
            if whole_response(seen):
                waiting.unregister(s)
                s.close()
                left -= 1
            else:
                waiting.modify(s, selectors.EVENT_READ, seen)

def closed_loop(n, conns, message, answered):
    """n exchanges over `conns`, one in flight on each: `message` sent, and
    the next sent as soon as what came back is `answered`."""
    import selectors
    ready = selectors.DefaultSelector()
    started = 0
    for s in conns[:n]:
        s.sendall(message)
        started += 1
        ready.register(s, selectors.EVENT_READ, b"")
    done = 0
    while done < n:
        for key, _ in ready.select(10):
            s = key.fileobj
            more = s.recv(65536)
            if not more:
                raise SystemExit("connection closed before its answer")
            seen = key.data + more
            if not answered(seen):
                ready.modify(s, selectors.EVENT_READ, seen)
                continue
            done += 1
            if started < n:
                s.sendall(message)
                started += 1
                ready.modify(s, selectors.EVENT_READ, b"")
            else:
                ready.unregister(s)
    ready.close()

def concurrent(n, clients):
    """n requests over the keep-alive connections `clients`, one in flight
    on each, a new one sent as soon as its answer is complete."""
    closed_loop(n, clients, GET, whole_response)

def sessions(n, at_once):
    """n WebSocket sessions, `at_once` of them in flight, each as
    `session` runs one, and a new one started as soon as one ends."""
    import selectors
    ready = selectors.DefaultSelector()
    # Each session's state: what it waits for, and what it has seen.
    started = done = 0

    def start():
        nonlocal started
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        started += 1
        ready.register(s, selectors.EVENT_WRITE, ["connect", b""])

    for _ in range(min(n, at_once)):
        start()
    while done < n:
        for key, _ in ready.select(10):
            s, state = key.fileobj, key.data
            if state[0] == "connect":
                s.sendall(UPGRADE)
                state[0] = "101"
                ready.modify(s, selectors.EVENT_READ, state)
                continue
            more = s.recv(65536)
            state[1] += more
            if state[0] == "101" and b"\r\n\r\n" in state[1]:
                head, state[1] = state[1].split(b"\r\n\r\n", 1)
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit(head.decode(errors="replace"))
                s.sendall(FRAME)
                state[0] = "echo"
            if state[0] == "echo" and len(state[1]) >= len(FRAME):
                state[1] = state[1][len(FRAME):]
                s.sendall(CLOSE)
                state[0] = "close"
            if state[0] == "close" and len(state[1]) >= len(CLOSE):
                state[1] = state[1][len(CLOSE):]
                s.shutdown(socket.SHUT_WR)
                state[0] = "end"
            elif state[0] == "end" and not more:
                ready.unregister(s)
                s.close()
                done += 1
                if started < n:
                    start()
            elif not more:
                raise SystemExit(f"connection closed while waiting for {state[0]}")
    ready.close()

def tunnels(n):
    """n WebSocket tunnels, each past its 101."""
    opened = []
    for _ in range(n):
        s = connect()
        s.sendall(UPGRADE)
        head, rest = read_head(s)
        if not head.startswith(b"HTTP/1.1 101") or rest:
            raise SystemExit(head.decode(errors="replace"))
        opened.append(s)
    return opened

def echoes(n, tunnels):
    """n echoes of FRAME over `tunnels`, one in flight on each, the next
    sent as soon as the last has come back whole."""
    closed_loop(n, tunnels, FRAME, lambda seen: len(seen) >= len(FRAME))

if workload == "messages":
    opened = tunnels(connections)
    echoes(max(500, count // 6), opened)
    subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
    echoes(count, opened)
    subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
    sys.exit(0)
if workload == "sessions":
    sessions(max(200, count // 6), connections)
    subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
    sessions(count, connections)
    subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
    sys.exit(0)
if workload == "concurrent":
    clients = [connect() for _ in range(connections)]
    concurrent(max(500, count // 6), clients)
    subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
    concurrent(count, clients)
    subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
    sys.exit(0)
if workload == "burst":
    burst(64)
    subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
    burst(count)
    subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
    sys.exit(0)
one = request if workload == "request" else session
for _ in range(max(200, count // 6)):
    one()
subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
for _ in range(count):
    one()
subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
PY

dump=$(ls "$dir"/callgrind.out.* | sort | head -1)
if [ -n "${INSTRUCTIONS_DUMP:-}" ]; then cp "$dump" "$INSTRUCTIONS_DUMP"; fi
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
echo "$workload: $((total / count)) instructions each ($count counted, $binary)"
