#!/usr/bin/env bash
# Turns bench/run.sh's raw wsfan summaries (.jsonl) into the Markdown report: the
# machine, then per scenario the median of each figure over the runs, scenecast
# beside the Node peer measured in the same session.
#   bench/report.sh RAW.jsonl SCENECAST_BIN > report.md
set -euo pipefail
RAW=$1
BIN=${2:-scenecast}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# Medians per (scenario, server); "us_frame" is server CPU time in the push phase
# divided by the frames delivered; "lost" is the worst run, not the median.
MEDIANS=$(jq -s '
  def med: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r1: if . == null then null else (. * 10 | round) / 10 end;
  map(select(.clients != null and .mode != "storm"))
  | map(. + {
      us_frame: (if (.received // 0) > 0 and .server_cpu_pct_push != null
                 then .server_cpu_pct_push / 100 * .push_s / (.received + (.unmatched // 0)) * 1e6 else null end),
      rss_growth_mb: (if .server_rss_kb_end != null then (.server_rss_kb_end - .server_rss_kb_connected) / 1024 else null end)})
  | group_by([.scenario, .server])
  | map({scenario: .[0].scenario, server: .[0].server, runs: length,
      clients: (map(.connected) | med), lost: (map(.lost) | max), extra: (map(.extra) | max),
      rss_conn: (map(.server_bytes_per_conn) | med | r1), us_frame: (map(.us_frame) | med | r1), us_frame_x: (map(.us_frame) | med),
      p50: (map(.lat_ms_p50) | med | r1), p99: (map(.lat_ms_p99) | med | r1),
      dps: (map(.deliveries_per_s) | med | if . == null then null else round end), ack: (map(.trigger_ack_ms_p50) | med | r1),
      srv_cpu: (map(.server_cpu_pct_push) | med), gen_cpu: (map(.gen_cpu_pct_push) | med),
      gen_cpu_connect: (map(.gen_cpu_pct_connect) | med), other: (map(.others_cpu_pct_push) | med),
      rss_growth_mb: (map(.rss_growth_mb) | med | r1), unmatched: (map(.unmatched) | med)})' "$RAW")
EXTRAS=$(jq -s 'map(select(.clients == null and (.scenario | startswith("cluster-") or startswith("recovery-") | not)))' "$RAW")
# Recovery storms, per scenario: medians of the times and CPU, worst run of the counts.
STORM=$(jq -s '
  def med: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r2: if . == null then null else (. * 100 | round) / 100 end;
  def r0: if . == null then null else round end;
  (map(select(.scenario | endswith("-extra"))) | map({key: "\(.scenario | rtrimstr("-extra")):\(.run)", value: .redis_cpu_s}) | from_entries) as $redis
  | map(select(.mode == "storm")) | group_by(.scenario)
  | map({scenario: .[0].scenario, runs: length, clients: (map(.connected) | min), missed: .[0].pushes,
      rec_true: (map(.recovered_true) | min), rec_false: (map(.recovered_false) | max),
      lost: (map(.lost) | max), extra: (map(.extra) | max), dups: (map(.offset_dups) | max),
      gaps: (map(.offset_gaps) | max), ooo: (map(.out_of_order) | max),
      failed: (map(.reconnect_failures | [.[]] | add // 0) | max),
      storm_s: (map(.storm_s) | med | r2), p50: (map(.recover_ms_p50) | med | r0), p99: (map(.recover_ms_p99) | med | r0),
      cpu_s: (map(.server_cpu_s_storm) | med | r2), cpu_pct: (map(.server_cpu_pct_storm) | med),
      us_frame: (map(if .received > 0 and .server_cpu_s_storm != null then .server_cpu_s_storm / .received * 1e6 else null end) | med | r2),
      gen: (map(.gen_cpu_pct_storm) | med), other: (map(.others_cpu_pct_storm) | med),
      redis: (map(. as $r | $redis["\($r.scenario):\($r.run)"]) | med)})' "$RAW")
HAVE_RECOVERY=$(jq -s 'map(select(.scenario | startswith("recovery-"))) | length > 0' "$RAW")
HAVE_HEADLINE=$(jq -s 'map(select(.scenario | startswith("recovery-") | not)) | length > 0' "$RAW")
# Cluster cases, per mode and shape: both generators' latencies, the servers' CPU per
# frame over all frames of both generators (one node serves both in embedded mode,
# each generator's node in redis mode), and Redis's own CPU.
CLUSTER=$(jq -s '
  def med: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r1: if . == null then null else (. * 10 | round) / 10 end;
  def cpu: .server_cpu_pct_push / 100 * .push_s;
  def frames: .received + (.unmatched // 0);
  map(select(.scenario | startswith("cluster-"))) as $all
  | [("embedded", "redis") as $mode | ("latency", "fanout") as $shape
     | ($all | map(select(.scenario | startswith("cluster-\($mode)-\($shape)-")))) as $rows
     | [$rows[].run] | unique | map(. as $run | $rows | map(select(.run == $run))
         | (map(select(.scenario | endswith("-a")))[0]) as $a
         | (map(select(.scenario | endswith("-b")))[0]) as $b
         | (map(select(.scenario | endswith("-redis")))[0]) as $r
         | select($a != null and $b != null)
         | {p50a: $a.lat_ms_p50, p99a: $a.lat_ms_p99, p50b: $b.lat_ms_p50, p99b: $b.lat_ms_p99,
            lost: ($a.lost + $b.lost), gen: ($a.gen_cpu_pct_push + $b.gen_cpu_pct_push),
            us: ((if $mode == "embedded" then ($a | cpu) else ($a | cpu) + ($b | cpu) end)
                 / (($a | frames) + ($b | frames)) * 1e6),
            redis: ($r.redis_cpu_s // null)})
     | select(length > 0)
     | {mode: $mode, shape: $shape, runs: length,
        p50a: (map(.p50a) | med | r1), p99a: (map(.p99a) | med | r1),
        p50b: (map(.p50b) | med | r1), p99b: (map(.p99b) | med | r1),
        lost: (map(.lost) | max), us: (map(.us) | med | r1), gen: (map(.gen) | med),
        redis: (map(.redis) | med)}]' "$RAW")

get() { # scenario server field
  jq -r --arg s "$1" --arg k "$2" --arg f "$3" \
    'map(select(.scenario == $s and .server == $k)) | .[0][$f] // "–" | tostring' <<<"$MEDIANS"
}
ratio() { # a b -> a/b with 2 decimals, or –
  awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "–" }'
}
row() { # label scenario field [unit]
  local s n
  s=$(get "$2" scenecast "$3"); n=$(get "$2" node "$3")
  echo "| $1 | $s | $n | $(ratio "$s" "$n") |"
}

cat <<EOF
# scenecast load benchmark — $(date +%F)

Produced by \`bench/run.sh\` (wsfan load generator and Node + ws peer from
\`bench/wsfan\` and \`bench/node-ws-peer\`), $(jq -s 'map(.run) | max' "$RAW") run(s) per case, medians shown; \`lost\` is the worst run.

## Machine

- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(awk '/MemTotal/ {printf "%.0f GB RAM", $2/1024/1024}' /proc/meminfo); kernel $(uname -r)
- file-descriptor hard limit $(ulimit -Hn); load generator, server and Node peer on the same machine (loopback)
- scenecast $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?") ($(basename "$BIN"), release build); $(node --version 2>/dev/null | sed 's/^/Node /' || echo "no Node")

EOF

if [[ $HAVE_HEADLINE == true ]]; then
cat <<EOF
## Headline: scenecast vs the Node peer, same session

| figure | scenecast | Node + ws | scenecast / Node |
|---|---|---|---|
$(row "RSS per idle connection, 10k (bytes)" idle rss_conn)
$(row "server CPU per frame, 10k × 200 HTTP pushes 5 ms apart (µs)" fanout us_frame)
$(row "deliveries/s, same run" fanout dps)
$(row "latency p50, same run (ms)" fanout p50)
$(row "latency p99, same run (ms)" fanout p99)
$(row "lost, same run" fanout lost)
$(row "latency p50, 10k × 40 HTTP pushes 250 ms apart (ms)" latency p50)
$(row "latency p99, same run (ms)" latency p99)
$(row "server CPU per frame, same run (µs)" latency us_frame)
$(row "lost, same run" latency lost)
$(row "latency p99, 1k × 200 pushes 5 ms apart (ms)" small p99)
$(row "server CPU per frame, same run (µs)" small us_frame)
$(row "clients connected of 19,900" max clients)
$(row "lost, 19.9k × 40 pushes 250 ms apart" max lost)
$(row "latency p99, same run (ms)" max p99)
$(row "RSS per connection at 19.9k (bytes)" max rss_conn)
$(row "text port: server CPU per frame, 10k × 200 pushes 5 ms apart (µs)" text-fanout us_frame)
$(row "text port: latency p99, 10k × 40 pushes 250 ms apart (ms)" text-latency p99)
$(row "slow readers: bystanders' p99 without stalled clients (ms)" slow-0 p99)
$(row "slow readers: bystanders' p99 with 20 stalled clients (ms)" slow-20 p99)
$(row "slow readers: server RSS growth with 20 stalled (MB)" slow-20 rss_growth_mb)

## Every case (medians)

| case | server | clients | lost | RSS/conn B | CPU/frame µs | p50 ms | p99 ms | deliveries/s | ack p50 ms | server CPU % | generator CPU % | other load % |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
$(jq -r '.[] | select(.scenario | startswith("cluster-") | not) | "| \(.scenario) | \(.server) | \(.clients) | \(.lost) | \(.rss_conn) | \(.us_frame) | \(.p50) | \(.p99) | \(.dps) | \(.ack) | \(.srv_cpu) | \(.gen_cpu) | \(.other) |"' <<<"$MEDIANS")

CPU % is of one core, measured over the push phase; "generator" is wsfan itself, which
shares the 2 cores with the server, "other load" the rest of the machine.

## Cluster mode: two nodes and a Redis vs one embedded node

Two generators of 5,000 clients each, both triggering through the first node
(\`latency\`: 20 pushes 500 ms apart each, interleaved, so 40 pushes 250 ms apart in
all; \`fanout\`: 100 pushes 10 ms apart each). "a" is the generator whose clients sit
on the node that takes the triggers, "b" the other one (in redis mode every one of
its frames crossed Redis). CPU per frame counts every frame of both generators.

| mode | shape | p50 a / b ms | p99 a / b ms | server CPU per frame µs | lost | generators' CPU % | redis-server CPU s |
|---|---|---|---|---|---|---|---|
$(jq -r '.[] | "| \(.mode) | \(.shape) | \(.p50a) / \(.p50b) | \(.p99a) / \(.p99b) | \(.us) | \(.lost) | \(.gen) | \(.redis) |"' <<<"$CLUSTER")

## Slow readers

$(jq -r '.[] | "- " + (to_entries | map("\(.key)=\(.value)") | join(", "))' <<<"$EXTRAS")

In \`slow-20\` the 20 stalled clients are closed by scenecast with 4008 once the kernel's
send buffer (~4 MB per socket, autotuned) and then their send queue (128 KiB) are
full or nothing moved for 2 s: \`slow_consumers_closed\` is
\`scenecast_slow_consumers_closed_total\` after the run. The Node peer keeps every
stalled socket and everything pushed to it since.
EOF
fi

if [[ $HAVE_RECOVERY == true ]]; then
# Ratios from the unrounded medians; the table shows them rounded to 0.01 µs.
off=$(get recovery-off scenecast us_frame_x); on=$(get recovery-on scenecast us_frame_x)
env=$(get recovery-envelope scenecast us_frame_x); peer=$(get recovery-on node us_frame_x)
soff=$(get recovery-spaced-off scenecast us_frame_x); son=$(get recovery-spaced-on scenecast us_frame_x)
senv=$(get recovery-spaced-envelope scenecast us_frame_x); speer=$(get recovery-spaced-on node us_frame_x)
r2() { awk -v a="$1" 'BEGIN { if (a ~ /^[0-9.eE+-]+$/) printf "%.2f", a; else printf "–" }'; }
cat <<EOF

## Recovery: what the history costs, the envelope path, and a recovery storm

10,000 clients on /home, 200 HTTP pushes 5 ms apart (the \`fanout\` case, where a
worker that falls behind batches pushes into one write, so its CPU per frame follows how
stretched the push phase was), then 40 pushes 250 ms apart (the \`latency\` case, one
frame per write); one fresh server per run. \`off\`: \`[history] size = 0\`; \`on\`: the default history (1000);
\`envelope\`: history on and every client connected with \`recover=1\` (welcome frame,
pushes as \`{"type":"push","offset":..,"data":..}\`). Server CPU per delivered frame.

| figure | value | bound |
|---|---|---|
| raw clients, history off: server CPU per frame (µs) | $(r2 "$off") | |
| raw clients, history on: server CPU per frame (µs) | $(r2 "$on") | |
| history on / off, raw clients | $(ratio "$on" "$off") | ≤ 1.10 |
| recover=1 clients (envelopes): server CPU per frame (µs) | $(r2 "$env") | |
| envelope / raw (history on) | $(ratio "$env" "$on") | ≤ 1.5 |
| Node + ws peer, same case, same session: CPU per frame (µs) | $(r2 "$peer") | |
| scenecast raw (history on) / Node | $(ratio "$on" "$peer") | |
| lost: off / on / envelope / Node (worst run) | $(get recovery-off scenecast lost) / $(get recovery-on scenecast lost) / $(get recovery-envelope scenecast lost) / $(get recovery-on node lost) | 0 |
| latency p99 ms: off / on / envelope / Node | $(get recovery-off scenecast p99) / $(get recovery-on scenecast p99) / $(get recovery-envelope scenecast p99) / $(get recovery-on node p99) | |
| **40 pushes 250 ms apart**: raw, history off: CPU per frame (µs) | $(r2 "$soff") | |
| same, raw, history on (µs) | $(r2 "$son") | |
| history on / off, raw clients | $(ratio "$son" "$soff") | ≤ 1.10 |
| same, recover=1 clients (µs) | $(r2 "$senv") | |
| envelope / raw (history on) | $(ratio "$senv" "$son") | ≤ 1.5 |
| Node + ws peer (µs) | $(r2 "$speer") | |
| lost: off / on / envelope / Node (worst run) | $(get recovery-spaced-off scenecast lost) / $(get recovery-spaced-on scenecast lost) / $(get recovery-spaced-envelope scenecast lost) / $(get recovery-spaced-on node lost) | 0 |
| latency p50 / p99 ms: off; on; envelope; Node | $(get recovery-spaced-off scenecast p50) / $(get recovery-spaced-off scenecast p99); $(get recovery-spaced-on scenecast p50) / $(get recovery-spaced-on scenecast p99); $(get recovery-spaced-envelope scenecast p50) / $(get recovery-spaced-envelope scenecast p99); $(get recovery-spaced-on node p50) / $(get recovery-spaced-on node p99) | |

### Recovery storm

$(jq -r '.[0].clients // "–"' <<<"$STORM") \`recover=1\` clients on /home drop their sockets at once (no close frame),
$(jq -r '.[0].missed // "–"' <<<"$STORM") pushes to /home are made while they are away, then all reconnect at once with
\`epoch\`, \`since\` and \`prev\` (1,000 handshakes in flight). Each must get exactly the pushes it
missed, in order, then \`recovered:true\` with \`replayed\` = that count. "storm" is the time from
the release of the reconnects to the last \`recovered\` frame; server CPU is over that time
(embedded: the one node; redis: the node the clients came back to, which replays from
Redis; the clients first connected to the other node). Counts are the worst run.

| case | runs | clients | recovered true / false | lost | duplicates | out of order | reconnect failures | storm s | per client p50 / p99 ms | server CPU s | server CPU % | µs per replayed frame | redis-server CPU s | wsfan CPU % | other load % |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
$(jq -r '.[] | "| \(.scenario | ltrimstr("recovery-storm-")) | \(.runs) | \(.clients) | \(.rec_true) / \(.rec_false) | \(.lost) | \(.extra) (offsets \(.dups)) | \(.ooo) | \(.failed) | \(.storm_s) | \(.p50) / \(.p99) | \(.cpu_s) | \(.cpu_pct) | \(.us_frame) | \(.redis // "–") | \(.gen) | \(.other) |"' <<<"$STORM")
EOF
fi
