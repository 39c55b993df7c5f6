#!/usr/bin/env bash
# A local kvseek cluster: N replicas on loopback ports sharing one context store, behind nginx
# (configs/nginx/kvseek.conf: consistent hashing on the context id, round robin otherwise).
#
#   scripts/cluster.sh up [-n 2] [-m MODEL] [--port 8090] [--base-port 8081] [--data-dir DIR] [-- serve options]
#   scripts/cluster.sh status
#   scripts/cluster.sh down
#
# State (pids, logs, the generated nginx.conf) lives in $KVSEEK_CLUSTER_DIR (default
# /tmp/kvseek-cluster). nginx is the Debian package (scripts/setup.sh installs it); it runs as
# the calling user with everything under the state directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=${KVSEEK_CLUSTER_DIR:-/tmp/kvseek-cluster}
cmd=${1:-status}
[ $# -gt 0 ] && shift

n=2 model=models/gemma-3-270m-q4_k_m.gguf port=8090 base=8081 data="$state/contexts" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    -m|--model) model=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --base-port) base=$2; shift 2 ;;
    --data-dir) data=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "cluster: unknown option $1" >&2; exit 2 ;;
  esac
done

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

wait_health() { # url, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -sf -o /dev/null "$1/health" && return 0
    sleep 0.1
  done
  return 1
}

up() {
  [ -x "$nginx_bin" ] || { echo "cluster: nginx is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  [ -x build/kvseek ] || { echo "cluster: build/kvseek is missing (make)" >&2; exit 1; }
  [ -f "$model" ] || { echo "cluster: no model at $model" >&2; exit 1; }
  if [ -f "$state/nginx.pid" ]; then echo "cluster: already up ($state); run down first" >&2; exit 1; fi
  mkdir -p "$state/logs" "$state/tmp" "$data"
  local servers="" i p
  for ((i = 0; i < n; i++)); do
    p=$((base + i))
    build/kvseek serve -m "$model" --host 127.0.0.1 --port "$p" --data-dir "$data" "${extra[@]}" \
      > "$state/logs/replica-$i.log" 2>&1 &
    echo $! > "$state/replica-$i.pid"
    echo "$p" > "$state/replica-$i.port"
    servers+="    server 127.0.0.1:$p max_fails=1 fail_timeout=10s;\n"
  done
  # the shipped config with this cluster's ports and listen port
  awk -v servers="$servers" -v port="$port" '
    /^[ \t]*server 127\.0\.0\.1:[0-9]+ / { if (!done[blk]++) printf "%s", servers; next }
    /^upstream / { blk++ }
    /^[ \t]*listen [0-9]+;/ { sub(/[0-9]+/, port) }
    { print }' configs/nginx/kvseek.conf > "$state/kvseek.conf"
  cat > "$state/nginx.conf" <<EOF
worker_processes 1;
pid $state/nginx.pid;
error_log $state/logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log $state/logs/nginx-access.log;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    fastcgi_temp_path $state/tmp/fastcgi;
    uwsgi_temp_path $state/tmp/uwsgi;
    scgi_temp_path $state/tmp/scgi;
    include $state/kvseek.conf;
}
EOF
  "$nginx_bin" -t -q -c "$state/nginx.conf" -p "$state" 2> "$state/logs/nginx-test.log" \
    || { cat "$state/logs/nginx-test.log" >&2; down; exit 1; }
  "$nginx_bin" -c "$state/nginx.conf" -p "$state"
  for ((i = 0; i < n; i++)); do
    wait_health "http://127.0.0.1:$((base + i))" 60 \
      || { echo "cluster: replica $i did not become healthy:" >&2; tail -5 "$state/logs/replica-$i.log" >&2; down; exit 1; }
  done
  wait_health "http://127.0.0.1:$port" 10 || { echo "cluster: nginx is not answering" >&2; down; exit 1; }
  echo "cluster: up: http://127.0.0.1:$port -> $n replicas (ports $base..$((base + n - 1))), store $data, state $state"
}

status() {
  local rc=0 f i
  if [ -f "$state/nginx.pid" ] && kill -0 "$(cat "$state/nginx.pid")" 2>/dev/null; then
    echo "nginx: running (pid $(cat "$state/nginx.pid"))"
  else
    echo "nginx: down"; rc=1
  fi
  for f in "$state"/replica-*.pid; do
    [ -f "$f" ] || continue
    i=${f##*replica-}; i=${i%.pid}
    local p; p=$(cat "$state/replica-$i.port")
    if kill -0 "$(cat "$f")" 2>/dev/null && curl -sf -o /dev/null "http://127.0.0.1:$p/health"; then
      echo "replica $i: healthy (port $p, pid $(cat "$f"))"
    else
      echo "replica $i: down (port $p)"; rc=1
    fi
  done
  return $rc
}

down() {
  local f
  if [ -f "$state/nginx.pid" ]; then
    "$nginx_bin" -c "$state/nginx.conf" -p "$state" -s stop 2>/dev/null || kill "$(cat "$state/nginx.pid")" 2>/dev/null || true
    rm -f "$state/nginx.pid"
  fi
  for f in "$state"/replica-*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$state"/replica-*.pid; do
    [ -f "$f" ] || continue
    local pid; pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  echo "cluster: down"
}

case "$cmd" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: scripts/cluster.sh up|status|down [options]" >&2; exit 2 ;;
esac
