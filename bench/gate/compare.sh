#!/usr/bin/env bash
# compare.sh: the gate against the site's nginx proxy and against etcd
# itself, side by side in one run on this machine (issue 5, "Benchmarks").
#
#   bench/gate/compare.sh            # defaults below; about 4 minutes
#   DURATION=10s ROUNDS=5 bench/gate/compare.sh
#
# Needs: etcd (Debian etcd-server 3.4, run with --enable-v2=true), nginx
# (nginx-light), wrk, htpasswd (apache2-utils), openssl, go, curl.
#
# What runs, all on loopback:
#   etcd    plain HTTP, data in /dev/shm, v2 API on
#   nginx   TLS, configured like profile::etcd::tlsproxy: proxy_buffering
#           off, one location per ACL prefix with auth_basic and an apr1
#           htpasswd, no upstream keep-alive (as at the site); a second
#           server block adds upstream keep-alive, for fairness
#   gate    TLS, the same ACL and the same apr1 htpasswd
# Each proxy writes an access log to a file, as at the site. Measured:
#   GET throughput and latency with wrk at CONNS connections, direct to
#   etcd, through nginx and through the gate; GET latency at a fixed RATE
#   (not saturated: what the proxy adds to a request); authenticated PUT
#   throughput (wrk, put.lua); then WATCHES idle wait=true watches held
#   through the gate and through nginx, with the proxy's resident memory.
# Every figure is the median of ROUNDS rounds in which the setups take
# turns. The table goes to stdout, progress to stderr.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
RATE=${RATE:-1000}
LAT_CONNS=${LAT_CONNS:-8}
THREADS=${THREADS:-2}
WATCHES=${WATCHES:-5000}
BASE_PORT=${BASE_PORT:-24000}

ETCD_PORT=$((BASE_PORT + 1)) ETCD_PEER=$((BASE_PORT + 2))
NGINX_PORT=$((BASE_PORT + 3)) NGINX_KA_PORT=$((BASE_PORT + 4))
GATE_PORT=$((BASE_PORT + 5)) GATE_METRICS=$((BASE_PORT + 6))

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
for bin in etcd nginx wrk htpasswd openssl go curl; do
  command -v "$bin" >/dev/null || { echo "compare.sh: $bin not found on PATH" >&2; exit 2; }
done
shm=/dev/shm; [ -d "$shm" ] && [ -w "$shm" ] || shm=${TMPDIR:-/tmp}
work=$(mktemp -d "$shm/gate-bench.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt $((2 * WATCHES + 1000)) ]; then
  echo "compare.sh: ulimit -n $(ulimit -n) is too low for $WATCHES watches" >&2; exit 2
fi

wait_http() { # url [curl args]: wait up to 30 s for a 2xx
  local url=$1; shift
  for _ in $(seq 300); do curl -fsS -o /dev/null "$@" "$url" 2>/dev/null && return 0; sleep 0.1; done
  echo "compare.sh: $url did not come up" >&2; exit 1
}

echo "== setting up in $work" >&2
# One ECDSA P-256 certificate for both proxies (wrk does not verify it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem"

# Users (apr1, as in the site's files) and ACLs, nginx-style and gate-style.
htpasswd -cbm "$work/root.htpasswd" root root-pw 2>/dev/null
cp "$work/root.htpasswd" "$work/conftool.htpasswd"
htpasswd -bm "$work/conftool.htpasswd" conftool conftool-pw 2>/dev/null
cp "$work/conftool.htpasswd" "$work/gate.htpasswd"
cat > "$work/acl.toml" <<ACL
admins = ["root"]
[[acl]]
prefix = "/"
users = ["root"]
[[acl]]
prefix = "/conftool"
users = ["root", "conftool"]
[[acl]]
prefix = "/eventlogging"
anonymous = true
# The load generators run on loopback: the gate's rate limiter stays on (a
# bucket per client, as by default) with room for the benchmark's rate.
[[rate_limit]]
clients = ["127.0.0.0/8"]
rate = 1000000000
burst = 1000000000
[[rate_limit]]
users = ["conftool"]
rate = 1000000000
burst = 1000000000
ACL
printf '%s' '{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}' > "$work/401.json"

echo "== starting etcd $(etcd --version | head -1 | awk '{print $3}')" >&2
etcd --name bench --data-dir "$work/etcd" --enable-v2=true --log-level error --logger zap \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ETCD_PORT/health"
key=/v2/keys/conftool/v1/pools/eqiad/appserver/apache2/mw1001.eqiad.wmnet
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$ETCD_PORT$key" --data-urlencode 'value={"pooled":"yes","weight":10}'

echo "== building and starting the gate" >&2
(cd "$repo" && go build -o "$work/confsync" ./cmd/confsync && go build -o "$work/watchers" ./bench/gate/watchers \
  && go build -o "$work/latency" ./bench/gate/latency)
# Every access log line is written, as nginx writes them (-access-log-rate 0).
"$work/confsync" gate -listen "127.0.0.1:$GATE_PORT" -metrics-addr "127.0.0.1:$GATE_METRICS" -access-log-rate 0 \
  -upstream "http://127.0.0.1:$ETCD_PORT" -tls-cert "$work/cert.pem" -tls-key "$work/key.pem" \
  -htpasswd "$work/gate.htpasswd" -acl "$work/acl.toml" -read-only-file "$work/gate-read-only" \
  -access-log "$work/gate-access.log" -log-level warn 2>"$work/gate.log" &
gate_pid=$!
pids+=($gate_pid)
wait_http "https://127.0.0.1:$GATE_PORT/version" -k

echo "== starting nginx $(nginx -v 2>&1 | cut -d/ -f2)" >&2
# The site's location blocks for one ACL, as tls_proxy.conf.erb renders
# them; $1 is the upstream block to use.
locations() {
  cat <<LOC
        location / {
            proxy_pass http://$1;
            proxy_http_version 1.1;
            $2
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            client_max_body_size 20971520;
        }
        location /metrics { proxy_pass http://$1; }
        location = /401.json { internal; root $work; }
        location /v2/keys/ {
            proxy_pass http://$1; proxy_http_version 1.1; $2
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            client_max_body_size 20971520;
            limit_except GET HEAD OPTIONS { auth_basic "etcd"; auth_basic_user_file $work/root.htpasswd; }
        }
        location /v2/keys/conftool {
            proxy_pass http://$1; proxy_http_version 1.1; $2
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            client_max_body_size 20971520;
            limit_except GET HEAD OPTIONS { auth_basic "etcd"; auth_basic_user_file $work/conftool.htpasswd; }
        }
        location /v2/keys/eventlogging {
            proxy_pass http://$1; proxy_http_version 1.1; $2
            client_max_body_size 20971520;
        }
LOC
}
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<NGINX
user root;
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections $((2 * WATCHES + 1000)); }
http {
    access_log $work/nginx-access.log;
    default_type application/json;
    types { application/json json; }
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    upstream etcd { server 127.0.0.1:$ETCD_PORT max_fails=0; }
    upstream etcd_keepalive { server 127.0.0.1:$ETCD_PORT max_fails=0; keepalive 64; }
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_timeout 3600;
    keepalive_requests 1000000;
    proxy_read_timeout 365d;
    proxy_buffering off;
    error_page 401 /401.json;
    server {   # as at the site: no upstream keep-alive
        listen 127.0.0.1:$NGINX_PORT ssl;
$(locations etcd "")
    }
    server {   # with upstream keep-alive, for fairness
        listen 127.0.0.1:$NGINX_KA_PORT ssl;
$(locations etcd_keepalive 'proxy_set_header Connection "";')
    }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' 2>>"$work/nginx-error.log" &
nginx_pid=$!
pids+=($nginx_pid)
wait_http "https://127.0.0.1:$NGINX_PORT/version" -k
wait_http "https://127.0.0.1:$NGINX_KA_PORT/version" -k

# Both proxies must enforce the ACL the same way before we time them.
for url in "https://127.0.0.1:$NGINX_PORT" "https://127.0.0.1:$GATE_PORT"; do
  code=$(curl -ks -o /dev/null -w '%{http_code}' -X PUT "$url/v2/keys/conftool/check" -d value=x)
  [ "$code" = 401 ] || { echo "compare.sh: anonymous PUT through $url gave $code, want 401" >&2; exit 1; }
  code=$(curl -ks -o /dev/null -w '%{http_code}' -u conftool:conftool-pw -X PUT "$url/v2/keys/conftool/check" -d value=x)
  case $code in 200|201) ;; *) echo "compare.sh: PUT as conftool through $url gave $code" >&2; exit 1 ;; esac
done

# Every figure is the median of ROUNDS runs; within a round the setups
# take turns, so noise from other work on the machine falls on all alike.
declare -A rps p50 p99 bad
record() { # name RESULT-line
  local name=$1 line=$2
  rps[$name]+=" $(sed -E 's/.* rps=([0-9]+).*/\1/' <<<"$line")"
  p50[$name]+=" $(sed -E 's/.* p50_ms=([0-9.]+).*/\1/' <<<"$line")"
  p99[$name]+=" $(sed -E 's/.* p99_ms=([0-9.]+).*/\1/' <<<"$line")"
  bad[$name]=$(( ${bad[$name]:-0} + $(sed -E 's/.* non2xx=([0-9]+) sockerr=([0-9]+).*/\1 + \2/' <<<"$line") ))
  echo "   $line" >&2
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# wrk takes one script: the PUT one gets the report appended.
cat "$here/put.lua" "$here/report.lua" > "$work/put.lua"
bench_wrk() { # name url [script]
  local name=$1 url=$2 script=${3:-$here/report.lua} out line
  echo "== $name: wrk -t$THREADS -c$CONNS -d$DURATION -s $(basename "$script") $url" >&2
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$script" "$url" 2>&1)
  line=$(grep '^RESULT' <<<"$out") || { echo "$out" >&2; exit 1; }
  record "$name" "$line"
}
bench_rate() { # name url
  local name=$1 url=$2 line
  echo "== $name: latency -rate $RATE -conns $LAT_CONNS -duration $DURATION $url" >&2
  line=$("$work/latency" -url "$url" -rate "$RATE" -conns "$LAT_CONNS" -duration "$DURATION" -cacert "$work/cert.pem" | grep '^RESULT') \
    || { echo "compare.sh: latency run failed" >&2; exit 1; }
  record "$name" "$line"
}
direct="http://127.0.0.1:$ETCD_PORT"
nginx="https://127.0.0.1:$NGINX_PORT"
nginx_ka="https://127.0.0.1:$NGINX_KA_PORT"
gate="https://127.0.0.1:$GATE_PORT"
auth=$(printf 'conftool:conftool-pw' | base64)
rows=("GET direct" "GET nginx (site)" "GET nginx+keepalive" "GET gate"
      "GET direct @rate" "GET nginx (site) @rate" "GET nginx+keepalive @rate" "GET gate @rate"
      "PUT direct (no auth)" "PUT nginx (site)" "PUT nginx+keepalive" "PUT gate")
for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  bench_wrk "GET direct" "$direct$key"
  bench_wrk "GET nginx (site)" "$nginx$key"
  bench_wrk "GET nginx+keepalive" "$nginx_ka$key"
  bench_wrk "GET gate" "$gate$key"
  bench_rate "GET direct @rate" "$direct$key"
  bench_rate "GET nginx (site) @rate" "$nginx$key"
  bench_rate "GET nginx+keepalive @rate" "$nginx_ka$key"
  bench_rate "GET gate @rate" "$gate$key"
  AUTH="" bench_wrk "PUT direct (no auth)" "$direct$key" "$work/put.lua"
  AUTH=$auth bench_wrk "PUT nginx (site)" "$nginx$key" "$work/put.lua"
  AUTH=$auth bench_wrk "PUT nginx+keepalive" "$nginx_ka$key" "$work/put.lua"
  AUTH=$auth bench_wrk "PUT gate" "$gate$key" "$work/put.lua"
done

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
nginx_rss_kb() { # master and workers
  local total=0 p
  for p in $nginx_pid $(pgrep -P "$nginx_pid"); do total=$((total + $(rss_kb "$p"))); done
  echo $total
}
hold_watches() { # name base-url rss-function
  local name=$1 base=$2 rssfn=$3 before after fifo
  before=$($rssfn)
  fifo="$work/watchers-$RANDOM"
  mkfifo "$fifo"
  "$work/watchers" -n "$WATCHES" -url "$base/v2/keys/bench/watched?wait=true" -cacert "$work/cert.pem" \
    <"$fifo" >"$work/watchers.out" 2>"$work/watchers.err" &
  local wpid=$!
  exec 9>"$fifo"
  for _ in $(seq 1200); do grep -q '^ready' "$work/watchers.out" 2>/dev/null && break; kill -0 $wpid 2>/dev/null || break; sleep 0.1; done
  if ! grep -q '^ready' "$work/watchers.out"; then
    echo "compare.sh: $WATCHES watches through $name did not open:" >&2; tail -5 "$work/watchers.err" >&2; exit 1
  fi
  sleep 2
  after=$($rssfn)
  if [ "$name" = gate ]; then
    gate_open=$(curl -fsS "http://127.0.0.1:$GATE_METRICS/metrics" | awk '/^confsync_gate_open_watches / {print $2}')
  fi
  echo "== $name: $(cat "$work/watchers.out"); RSS ${before} kB before, ${after} kB with them open" >&2
  watch_rss[$name]=$after
  exec 9>&-
  wait $wpid || true
  rm -f "$fifo"
}
declare -A watch_rss
gate_rss() { rss_kb "$gate_pid"; }
gate_open=?
hold_watches gate "$gate" gate_rss
hold_watches "nginx (site)" "$nginx" nginx_rss_kb

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
printf '\n'
printf 'Machine: %s, %s cores, load average %s at the end; TLS to the proxies, plain HTTP to etcd.\n' "$cpu" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'Medians of %s rounds of %s per run; wrk -t%s.\n' "$ROUNDS" "$DURATION" "$THREADS"
printf 'etcd %s (data in %s), nginx %s, gate %s\n\n' "$(etcd --version | head -1 | awk '{print $3}')" "$shm" "$(nginx -v 2>&1 | cut -d/ -f2)" "$(go version | awk '{print $3}')"
printf '| %-34s | %-22s | %8s | %8s | %8s | %s |\n' "run" "load" "req/s" "p50 ms" "p99 ms" "errors"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------------" "------------------------" "----------" "----------" "----------" "--------"
for name in "${rows[@]}"; do
  case $name in
    *@rate) load="$RATE req/s, $LAT_CONNS conns" ;;
    *) load="wrk, $CONNS conns" ;;
  esac
  printf '| %-34s | %-22s | %8s | %8s | %8s | %s |\n' "${name/@rate/at fixed rate}" "$load" \
    "$(median "${rps[$name]}")" "$(median "${p50[$name]}")" "$(median "${p99[$name]}")" "${bad[$name]}"
done
printf '\n'
m() { median "$1"; }
awk -v g="$(m "${p50[GET gate @rate]}")" -v d="$(m "${p50[GET direct @rate]}")" \
    -v G="$(m "${p99[GET gate @rate]}")" -v D="$(m "${p99[GET direct @rate]}")" \
  'BEGIN { printf "Added latency at %s req/s, gate vs direct: p50 %+.3f ms, p99 %+.3f ms\n", "'"$RATE"'", g - d, G - D }'
awk -v g="$(m "${rps[GET gate]}")" -v n="$(m "${rps[GET nginx (site)]}")" -v k="$(m "${rps[GET nginx+keepalive]}")" \
  'BEGIN { printf "GET throughput, gate / nginx (site): %.2fx; gate / nginx+keepalive: %.2fx\n", g / n, g / k }'
awk -v g="$(m "${rps[PUT gate]}")" -v n="$(m "${rps[PUT nginx (site)]}")" -v k="$(m "${rps[PUT nginx+keepalive]}")" \
  'BEGIN { printf "Authenticated PUT, gate / nginx (site): %.2fx; gate / nginx+keepalive: %.2fx\n", g / n, g / k }'
printf '%s idle watches: gate RSS %d MB (confsync_gate_open_watches %s); nginx (master + workers) RSS %d MB\n' \
  "$WATCHES" $(( ${watch_rss[gate]} / 1024 )) "$gate_open" $(( ${watch_rss[nginx (site)]} / 1024 ))
