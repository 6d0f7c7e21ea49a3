#!/usr/bin/env bash
# compare.sh: the gate against the site's nginx proxy and against etcd
# itself, side by side in one run on this machine (issue 5, "Benchmarks").
#
#   bench/gate/compare.sh            # defaults below; about 3 minutes
#   DURATION=30s CONNS=128 bench/gate/compare.sh
#
# Needs: etcd (Debian etcd-server 3.4, run with --enable-v2=true), nginx
# (nginx-light), wrk, htpasswd (apache2-utils), openssl, go.
#
# What runs, all on loopback:
#   etcd    plain HTTP, data in /dev/shm, v2 API on
#   nginx   TLS, configured like profile::etcd::tlsproxy: proxy_buffering
#           off, one location per ACL prefix with auth_basic and an apr1
#           htpasswd, no upstream keep-alive (as at the site); a second
#           server block adds upstream keep-alive, for fairness
#   gate    TLS, the same ACL and the same apr1 htpasswd
# and measures with wrk:
#   GET throughput and p99 at CONNS connections, and p99 at LAT_CONNS
#   connections (light load: the proxy's own added latency), direct to
#   etcd, through nginx and through the gate; authenticated PUT through
#   each; then WATCHES idle wait=true watches held through the gate (and
#   through nginx) and the proxy's resident memory with them open.
# Each proxy writes an access log to a file, as at the site.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
LAT_CONNS=${LAT_CONNS:-4}
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
(cd "$repo" && go build -o "$work/gate" ./bench/gate/gatecmd && go build -o "$work/watchers" ./bench/gate/watchers)
"$work/gate" -listen "127.0.0.1:$GATE_PORT" -metrics-addr "127.0.0.1:$GATE_METRICS" \
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

declare -A rps p50 p99 bad
# wrk takes one script: the PUT one gets the report appended.
cat "$here/put.lua" "$here/report.lua" > "$work/put.lua"
run() { # name conns url [script]
  local name=$1 conns=$2 url=$3 script=${4:-$here/report.lua}
  local threads=$THREADS; [ "$conns" -lt "$threads" ] && threads=$conns
  echo "== $name: wrk -t$threads -c$conns -d$DURATION -s $(basename "$script") $url" >&2
  local out
  out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" -s "$script" "$url" 2>&1)
  local line; line=$(grep '^RESULT' <<<"$out") || { echo "$out" >&2; exit 1; }
  rps[$name]=$(sed -E 's/.* rps=([0-9]+).*/\1/' <<<"$line")
  p50[$name]=$(sed -E 's/.* p50_ms=([0-9.]+).*/\1/' <<<"$line")
  p99[$name]=$(sed -E 's/.* p99_ms=([0-9.]+).*/\1/' <<<"$line")
  bad[$name]=$(sed -E 's/.* non2xx=([0-9]+) sockerr=([0-9]+).*/\1+\2/' <<<"$line")
  echo "   $line" >&2
}
direct="http://127.0.0.1:$ETCD_PORT"
nginx="https://127.0.0.1:$NGINX_PORT"
nginx_ka="https://127.0.0.1:$NGINX_KA_PORT"
gate="https://127.0.0.1:$GATE_PORT"

run "GET direct"           "$CONNS" "$direct$key"
run "GET nginx (site)"     "$CONNS" "$nginx$key"
run "GET nginx+keepalive"  "$CONNS" "$nginx_ka$key"
run "GET gate"             "$CONNS" "$gate$key"
run "GET direct, light"    "$LAT_CONNS" "$direct$key"
run "GET nginx (site), light"    "$LAT_CONNS" "$nginx$key"
run "GET nginx+keepalive, light" "$LAT_CONNS" "$nginx_ka$key"
run "GET gate, light"      "$LAT_CONNS" "$gate$key"
export AUTH
AUTH=""
run "PUT direct (no auth)" "$CONNS" "$direct$key" "$work/put.lua"
AUTH=$(printf 'conftool:conftool-pw' | base64)
run "PUT nginx (site)"     "$CONNS" "$nginx$key" "$work/put.lua"
run "PUT nginx+keepalive"  "$CONNS" "$nginx_ka$key" "$work/put.lua"
run "PUT gate"             "$CONNS" "$gate$key" "$work/put.lua"

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
  echo "== $name: $(cat "$work/watchers.out"); RSS ${before} kB before, ${after} kB with them open" >&2
  watch_rss[$name]=$after
  watch_open[$name]=$(cat "$work/watchers.out")
  exec 9>&-
  wait $wpid || true
  rm -f "$fifo"
}
declare -A watch_rss watch_open
gate_rss() { rss_kb "$gate_pid"; }
hold_watches gate "$gate" gate_rss
gate_open=$(curl -fsS "http://127.0.0.1:$GATE_METRICS/metrics" | awk '/^gate_open_watches / {print $2}')
hold_watches "nginx (site)" "$nginx" nginx_rss_kb

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
printf '\n'
printf 'Machine: %s, %s cores; %s each run, wrk -t%s; TLS to the proxies, plain HTTP to etcd.\n' "$cpu" "$(nproc)" "$DURATION" "$THREADS"
printf 'etcd %s (data in %s), nginx %s, gate %s\n\n' "$(etcd --version | head -1 | awk '{print $3}')" "$shm" "$(nginx -v 2>&1 | cut -d/ -f2)" "$(go version | awk '{print $3}')"
printf '| %-28s | %6s | %9s | %8s | %8s | %s |\n' "run" "conns" "req/s" "p50 ms" "p99 ms" "non-2xx+socket errors"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------" "--------" "-----------" "----------" "----------" "-----------------------"
for name in "GET direct" "GET nginx (site)" "GET nginx+keepalive" "GET gate" \
            "GET direct, light" "GET nginx (site), light" "GET nginx+keepalive, light" "GET gate, light" \
            "PUT direct (no auth)" "PUT nginx (site)" "PUT nginx+keepalive" "PUT gate"; do
  conns=$CONNS; case $name in *light*) conns=$LAT_CONNS ;; esac
  printf '| %-28s | %6s | %9s | %8s | %8s | %s |\n' "$name" "$conns" "${rps[$name]}" "${p50[$name]}" "${p99[$name]}" "${bad[$name]}"
done
printf '\n'
awk -v g="${p99[GET gate, light]}" -v d="${p99[GET direct, light]}" 'BEGIN { printf "Added p99 at light load, gate vs direct: %.3f ms\n", g - d }'
awk -v g="${rps[GET gate]}" -v n="${rps[GET nginx (site)]}" -v k="${rps[GET nginx+keepalive]}" \
  'BEGIN { printf "GET throughput, gate / nginx (site): %.2fx; gate / nginx+keepalive: %.2fx\n", g / n, g / k }'
awk -v g="${rps[PUT gate]}" -v n="${rps[PUT nginx (site)]}" -v k="${rps[PUT nginx+keepalive]}" \
  'BEGIN { printf "Authenticated PUT, gate / nginx (site): %.2fx; gate / nginx+keepalive: %.2fx\n", g / n, g / k }'
printf '%s idle watches: gate RSS %d MB (gate_open_watches %s); nginx (master + workers) RSS %d MB\n' \
  "$WATCHES" $(( ${watch_rss[gate]} / 1024 )) "$gate_open" $(( ${watch_rss[nginx (site)]} / 1024 ))
