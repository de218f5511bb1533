#!/usr/bin/env bash
# End-to-end load benchmark: scenecast (release build, bench/bench.toml) against the
# Node + ws peer, both driven by the wsfan load generator on this machine (loopback).
# Writes bench/results/YYYY-MM-DD.md (medians of $RUNS runs) and the raw wsfan JSON
# beside it (.jsonl).
#
#   bench/run.sh                        # everything, 3 runs each (~25 min on 2 cores)
#   RUNS=1 SCENARIOS="idle latency" bench/run.sh
#
# Environment:
#   WSFAN_DIR      wsfan sources            (default bench/wsfan)
#   NODE_PEER_DIR  Node + ws peer           (default bench/node-ws-peer)
#   SCENECAST_BIN  server binary to measure (default: cargo build --release)
#   RUNS           runs per case            (default 3)
#   SCENARIOS      subset of: idle fanout latency small max text slow cluster recovery
#                  (recovery alone: OUT=bench/results/DATE-recovery.md SCENARIOS=recovery)
#   PEER           0 to skip the Node peer (e.g. to measure an older scenecast build)
#   OUT            results file             (default bench/results/$(date +%F).md)
#
# Every process started here is killed on exit; every run is bounded by `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WSFAN_DIR=${WSFAN_DIR:-$ROOT/bench/wsfan}
NODE_PEER_DIR=${NODE_PEER_DIR:-$ROOT/bench/node-ws-peer}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-idle fanout latency small max text slow cluster recovery}
OUT=${OUT:-$ROOT/bench/results/$(date +%F).md}
RAW=${OUT%.md}.jsonl
WORK=$(mktemp -d)
CONFIG=$ROOT/bench/bench.toml
CLIENT_TOKEN=bench-client
API_TOKEN=bench-api
RUN_TIMEOUT=300

# Processes started here and not yet reaped; a reaped one is dropped at once, so
# that the clean-up never signals a PID the system has since given to someone else.
PIDS=()
forget() { local keep=() p; for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
reap() { wait "$1" 2>/dev/null || true; forget "$1"; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[bench] $*" >&2; }

# The file-descriptor hard limit bounds both the server and wsfan (19.9k clients).
ulimit -n "$(ulimit -Hn)"

# ---- builds -----------------------------------------------------------------
if [[ -z ${SCENECAST_BIN:-} ]]; then
  log "building scenecast (release)"
  cargo build --release --locked --quiet --bin scenecast
  SCENECAST_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/scenecast
fi
[[ -d $WSFAN_DIR ]] || { echo "wsfan not found at $WSFAN_DIR (set WSFAN_DIR)" >&2; exit 2; }
log "building wsfan from $WSFAN_DIR"
(cd "$WSFAN_DIR" && CARGO_TARGET_DIR=$ROOT/bench/target/wsfan cargo build --release --locked --quiet)
WSFAN=$ROOT/bench/target/wsfan/release/wsfan
HAVE_NODE=false
if command -v node >/dev/null && [[ -f $NODE_PEER_DIR/server.js ]]; then
  [[ -d $NODE_PEER_DIR/node_modules ]] || (cd "$NODE_PEER_DIR" && npm ci --silent >/dev/null)
  HAVE_NODE=true
else
  log "Node peer not available: scenecast figures only"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url: wait until it answers (any status), at most 10 s
  for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  return 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# ---- servers -------------------------------------------------------------------
# start_server KIND [ENV...]: starts scenecast or node on free ports; sets SERVER_PID,
# HTTP_PORT, TEXT_PORT.
start_server() {
  local kind=$1; shift
  HTTP_PORT=$(free_port); TEXT_PORT=$(free_port)
  if [[ $kind == scenecast ]]; then
    env RUST_LOG=${RUST_LOG:-warn} SCENECAST__SERVER__BIND=127.0.0.1:$HTTP_PORT \
      SCENECAST__INGRESS__TEXT_BIND=127.0.0.1:$TEXT_PORT "$@" \
      "$SCENECAST_BIN" serve --config "$CONFIG" >>"$WORK/server.log" 2>&1 &
  else
    (cd "$NODE_PEER_DIR" && exec env PORT=$HTTP_PORT TEXT_PORT=$TEXT_PORT CLIENT_TOKEN=$CLIENT_TOKEN \
      API_TOKEN=$API_TOKEN "$@" node server.js) >>"$WORK/server.log" 2>&1 &
  fi
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_http "http://127.0.0.1:$HTTP_PORT/?func=none" || { echo "server did not start" >&2; tail "$WORK/server.log" >&2; exit 1; }
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  reap "$SERVER_PID"
}

trigger_url() { # kind func: the HTTP trigger of one push
  local func=$2
  [[ $1 == node && $func == pushPadded ]] && func=pushHomeLogic
  echo "http://127.0.0.1:$HTTP_PORT/?func=$func&token=$API_TOKEN&seq={seq}&t_ns={t_ns}${PAD:+&pad=$PAD}"
}

# wsfan_run SCENARIO KIND N [wsfan args...]: one wsfan run against the running
# server, its JSON summary appended to $RAW with the scenario, server and run.
wsfan_run() {
  local scenario=$1 kind=$2 n=$3; shift 3
  local out
  out=$(timeout "$RUN_TIMEOUT" "$WSFAN" -n "$n" --pages home \
    --url "ws://127.0.0.1:$HTTP_PORT/?page={page}&token=$CLIENT_TOKEN" \
    --server-pid "$SERVER_PID" "$@" 2>>"$WORK/wsfan.log" | tail -1) || true
  [[ $out == \{* ]] || { log "$scenario/$kind: wsfan failed"; tail -3 "$WORK/wsfan.log" >&2; return 0; }
  echo "$out" | jq -c --arg s "$scenario" --arg k "$kind" --argjson r "$RUN" '. + {scenario: $s, server: $k, run: $r}' >>"$RAW"
}

kinds() { echo scenecast; $HAVE_NODE && [[ ${PEER:-1} != 0 ]] && echo node; return 0; }

# One fresh server per run: RSS per connection is only meaningful from a clean start.
simple_case() { # scenario n [wsfan args...] (trigger given per kind by the caller's TRIGGER)
  local scenario=$1 n=$2; shift 2
  for RUN in $(seq "$RUNS"); do
    for kind in $(kinds); do
      start_server "$kind" ${SERVER_ENV[$kind]:-}
      log "$scenario: $kind, $n clients, run $RUN"
      case ${TRIGGER:-http} in
        none) wsfan_run "$scenario" "$kind" "$n" --trigger none --settle-ms 3000 "$@" ;;
        http) wsfan_run "$scenario" "$kind" "$n" --trigger http \
                --trigger-target "$(trigger_url "$kind" "${FUNC:-pushHomeLogic}")" --target page:home "$@" ;;
        tcp)
          if listening "$TEXT_PORT"; then
            wsfan_run "$scenario" "$kind" "$n" --trigger tcp --trigger-target "127.0.0.1:$TEXT_PORT" \
              --trigger-body '{"page":"home","seq":{seq},"t_ns":{t_ns}}' --target page:home "$@"
          else
            log "$scenario: $kind has no text port: not available"
          fi ;;
      esac
      stop_server
    done
  done
}

declare -A SERVER_ENV=()

# ---- scenarios -------------------------------------------------------------------
run_idle()    { TRIGGER=none simple_case idle 10000; }
run_fanout()  { simple_case fanout 10000 -m 200 --interval-ms 5; }
run_latency() { simple_case latency 10000 -m 40 --interval-ms 250; }
run_small()   { simple_case small 1000 -m 200 --interval-ms 5; }
run_max()     { simple_case max 19900 -m 40 --interval-ms 250 --connect-deadline-s 120; }
run_text()    { TRIGGER=tcp simple_case text-fanout 10000 -m 200 --interval-ms 5
                TRIGGER=tcp simple_case text-latency 10000 -m 40 --interval-ms 250; }

# 500 reading clients get 600 pushes of 12 KB, 10 ms apart, with and without 20
# clients on the same page that never read. The kernel first absorbs ~4 MB per
# stalled socket (send buffer autotuning), so the pushes total 7 MB per client;
# scenecast runs with a 128 KiB send queue and a 2 s send timeout.
run_slow() {
  local pad; pad=$(head -c 12000 /dev/zero | tr '\0' x)
  SERVER_ENV[scenecast]="SCENECAST__SERVER__SEND_QUEUE_BYTES=131072 SCENECAST__SERVER__SEND_TIMEOUT_SECS=2"
  for RUN in $(seq "$RUNS"); do
    for kind in $(kinds); do
      for stalled in 0 20; do
        start_server "$kind" ${SERVER_ENV[$kind]:-}
        local scenario=slow-$stalled
        if (( stalled > 0 )); then
          timeout 120 python3 "$ROOT/bench/stalled_clients.py" 127.0.0.1 "$HTTP_PORT" \
            "/?page=home&token=$CLIENT_TOKEN" "$stalled" 20 2>>"$WORK/stalled.log" &
          local stalled_pid=$!; PIDS+=("$stalled_pid")
          for _ in $(seq 100); do grep -q connected "$WORK/stalled.log" 2>/dev/null && break; sleep 0.1; done
        fi
        log "$scenario: $kind, run $RUN"
        PAD=$pad wsfan_run "$scenario" "$kind" 500 --trigger http \
          --trigger-target "$(PAD=$pad trigger_url "$kind" pushPadded)" --target page:home -m 600 --interval-ms 10
        if (( stalled > 0 )); then
          reap "$stalled_pid"
          local slow
          slow=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^scenecast_slow_consumers_closed_total/ {print $2}')
          echo "{\"scenario\":\"$scenario-extra\",\"server\":\"$kind\",\"run\":$RUN,\"stalled\":$stalled,\"slow_consumers_closed\":${slow:-null}}" >>"$RAW"
          : >"$WORK/stalled.log"
        fi
        stop_server
      done
    done
  done
  unset 'SERVER_ENV[scenecast]'
}

# The 10k latency and fan-out runs with two generators of 5k clients each, once on
# one embedded node and once on two nodes sharing a Redis (one node per generator).
# Both generators trigger through the first node; each recognises its own pushes
# by field name (aseq / bseq) and counts the other's as unmatched.
run_cluster() {
  command -v redis-server >/dev/null || { log "cluster: no redis-server: not available"; return 0; }
  local redis_port; redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  local redis_pid=$!; PIDS+=("$redis_pid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for RUN in $(seq "$RUNS"); do
    for mode in embedded redis; do
      for shape in "latency 20 500" "fanout 100 10"; do
        set -- $shape
        local shape_name=$1 pushes=$2 interval=$3 prefix="bench$RANDOM"
        local env_redis=()
        [[ $mode == redis ]] && env_redis=(SCENECAST__REDIS__URL=redis://127.0.0.1:$redis_port/ SCENECAST__REDIS__PREFIX=$prefix)
        start_server scenecast "${env_redis[@]}" SCENECAST__SERVER__NODE_ID=bench-a
        local a_pid=$SERVER_PID a_port=$HTTP_PORT b_pid=$SERVER_PID b_port=$HTTP_PORT
        if [[ $mode == redis ]]; then
          start_server scenecast "${env_redis[@]}" SCENECAST__SERVER__NODE_ID=bench-b
          b_pid=$SERVER_PID; b_port=$HTTP_PORT
          for _ in $(seq 50); do
            curl -s "http://127.0.0.1:$a_port/healthz" | grep -q '"redis":true' &&
              curl -s "http://127.0.0.1:$b_port/healthz" | grep -q '"redis":true' && break
            sleep 0.1
          done
          curl -s "http://127.0.0.1:$b_port/healthz" | grep -q '"mode":"redis"' ||
            { log "cluster: this build ignores redis.url: not available"; stop_server; SERVER_PID=$a_pid; stop_server; return 0; }
        fi
        local redis_cpu0; redis_cpu0=$(cpu_ticks "$redis_pid")
        log "cluster-$mode-$shape_name: run $RUN"
        local scenario=cluster-$mode-$shape_name
        local generators=()
        for side in a b; do
          local port=$a_port pid=$a_pid field=aseq func=benchA settle=1000
          [[ $side == b ]] && { port=$b_port; pid=$b_pid; field=bseq; func=benchB; settle=$((1000 + interval / 2)); }
          SERVER_PID=$pid HTTP_PORT=$port RUN=$RUN wsfan_run "$scenario-$side" scenecast 5000 \
            --trigger http --trigger-target "http://127.0.0.1:$a_port/?func=$func&token=$API_TOKEN&seq={seq}&t_ns={t_ns}" \
            --seq-from "regex:\"$field\"\\s*:\\s*\"?(\\d+)" --target page:home \
            -m "$pushes" --interval-ms "$interval" --settle-ms "$settle" &
          PIDS+=("$!"); generators+=("$!")
        done
        for pid in "${generators[@]}"; do reap "$pid"; done
        local redis_ticks=$(( $(cpu_ticks "$redis_pid") - redis_cpu0 ))
        echo "{\"scenario\":\"$scenario-redis\",\"server\":\"redis-server\",\"run\":$RUN,\"redis_cpu_s\":$(awk -v t="$redis_ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')}" >>"$RAW"
        SERVER_PID=$a_pid; stop_server
        [[ $b_pid != "$a_pid" ]] && { SERVER_PID=$b_pid; stop_server; }
      done
    done
  done
  kill "$redis_pid" 2>/dev/null || true
  reap "$redis_pid"
}

# Recovery (README "Recovery"), per run:
#  - recovery-off / recovery-on: the fanout case (10k raw clients, 200 HTTP pushes 5 ms
#    apart) with [history] size = 0 and with the default history: what keeping the
#    history costs connections that do not use it; the Node peer runs the same case;
#  - recovery-envelope: the same with recover=1 clients (welcome, push envelopes);
#  - recovery-spaced-{off,on,envelope}: the same three with 40 pushes 250 ms apart (the
#    latency case: one frame per write, no batching), Node peer included;
#  - recovery-storm-embedded: 10k recover=1 clients drop their sockets at once, 50
#    pushes are made while they are away, all reconnect at once with their positions;
#  - recovery-storm-redis: the same on two nodes sharing a Redis, the clients
#    connecting to the first and coming back to the second (history in Redis);
#    STORM_REDIS=0 skips it. STORM_CLIENTS / STORM_MISSED change 10000 / 50.
#  Subsets: RECOVERY_SHAPES="fanout spaced", RECOVERY_VARIANTS="off on envelope", STORM=0.
STORM_CLIENTS=${STORM_CLIENTS:-10000}
STORM_MISSED=${STORM_MISSED:-50}
storm_run() { # scenario reconnect_port [wsfan args...]
  local scenario=$1 reconnect_port=$2; shift 2
  wsfan_run "$scenario" scenecast "$STORM_CLIENTS" --storm \
    --reconnect-url "ws://127.0.0.1:$reconnect_port/?page={page}&token=$CLIENT_TOKEN" \
    --trigger http --trigger-target "$(trigger_url scenecast pushHomeLogic)" --target page:home \
    -m "$STORM_MISSED" --connect-deadline-s 120 --drain-timeout-s 120 "$@"
}
run_recovery() {
  for RUN in $(seq "$RUNS"); do
    local variant shape
    for shape in ${RECOVERY_SHAPES:-fanout spaced}; do
      local push_args=(-m 200 --interval-ms 5)
      if [[ $shape == spaced ]]; then shape=spaced-; push_args=(-m 40 --interval-ms 250); else shape=; fi
      for variant in ${RECOVERY_VARIANTS:-off on envelope}; do
        local env=() extra=()
        [[ $variant == off ]] && env=(SCENECAST__HISTORY__SIZE=0)
        [[ $variant == envelope ]] && extra=(--recover)
        start_server scenecast "${env[@]}"
        log "recovery-$shape$variant: scenecast, run $RUN"
        wsfan_run "recovery-$shape$variant" scenecast 10000 --trigger http \
          --trigger-target "$(trigger_url scenecast pushHomeLogic)" --target page:home \
          "${push_args[@]}" "${extra[@]}"
        stop_server
      done
      if $HAVE_NODE && [[ ${PEER:-1} != 0 ]]; then
        start_server node
        log "recovery-${shape}on: node, run $RUN"
        wsfan_run "recovery-${shape}on" node 10000 --trigger http \
          --trigger-target "$(trigger_url node pushHomeLogic)" --target page:home "${push_args[@]}"
        stop_server
      fi
    done
    [[ ${STORM:-1} == 0 ]] && continue
    start_server scenecast
    log "recovery-storm-embedded: run $RUN"
    storm_run recovery-storm-embedded "$HTTP_PORT"
    stop_server
  done
  [[ ${STORM:-1} == 0 || ${STORM_REDIS:-1} == 0 ]] && { log "recovery-storm-redis: skipped (STORM_REDIS=0)"; return 0; }
  command -v redis-server >/dev/null || { log "recovery-storm-redis: no redis-server: not available"; return 0; }
  local redis_port; redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  local redis_pid=$!; PIDS+=("$redis_pid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for RUN in $(seq "$RUNS"); do
    local env_redis=(SCENECAST__REDIS__URL=redis://127.0.0.1:$redis_port/ SCENECAST__REDIS__PREFIX=storm$RANDOM)
    start_server scenecast "${env_redis[@]}" SCENECAST__SERVER__NODE_ID=storm-a
    local a_pid=$SERVER_PID a_port=$HTTP_PORT
    start_server scenecast "${env_redis[@]}" SCENECAST__SERVER__NODE_ID=storm-b
    local b_pid=$SERVER_PID b_port=$HTTP_PORT
    for _ in $(seq 50); do
      curl -s "http://127.0.0.1:$a_port/healthz" | grep -q '"redis":true' &&
        curl -s "http://127.0.0.1:$b_port/healthz" | grep -q '"redis":true' && break
      sleep 0.1
    done
    local redis_cpu0; redis_cpu0=$(cpu_ticks "$redis_pid")
    log "recovery-storm-redis: run $RUN (connect to node a, come back to node b)"
    # Clients and pushes on node a; the reconnects, and the measured CPU, on node b.
    HTTP_PORT=$a_port SERVER_PID=$b_pid storm_run recovery-storm-redis "$b_port"
    local redis_ticks=$(( $(cpu_ticks "$redis_pid") - redis_cpu0 ))
    echo "{\"scenario\":\"recovery-storm-redis-extra\",\"server\":\"redis-server\",\"run\":$RUN,\"redis_cpu_s\":$(awk -v t="$redis_ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')}" >>"$RAW"
    SERVER_PID=$b_pid; stop_server
    SERVER_PID=$a_pid; stop_server
  done
  kill "$redis_pid" 2>/dev/null || true
  reap "$redis_pid"
}

# ---- run --------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
: >"$RAW"
START=$(date +%s)
for scenario in $SCENARIOS; do "run_$scenario"; done
log "all runs done in $(( $(date +%s) - START )) s; writing $OUT"
"$ROOT/bench/report.sh" "$RAW" "$SCENECAST_BIN" >"$OUT"
log "wrote $OUT"
