#!/usr/bin/env bash
# The frontend container's health check: healthy when nginx answers with devtest-router's
# config (a request for a hostname nobody registered gets the generated 404, recognised by its
# `X-Devtest-Router: unknown-host` header) and the watcher is alive. Exit 0 healthy, 1 not,
# with one line saying why. Until the watcher's first apply nginx has no server of ours, so
# a frontend whose registry was never reachable reports unhealthy.
set -uo pipefail

HEALTHCHECK_URL=${HEALTHCHECK_URL:-http://127.0.0.1/}
HEALTHCHECK_HOST=${HEALTHCHECK_HOST:-devtest-router-healthcheck.invalid}
CURL_BIN=${CURL_BIN:-curl}
FRONTEND_RUN_DIR=${FRONTEND_RUN_DIR:-/run/devtest-router}

# --insecure: with TLS on (HEALTHCHECK_URL=https://127.0.0.1/) the wildcard certificate is not
# for 127.0.0.1, and this asks its own nginx on loopback.
headers=$("$CURL_BIN" --silent --show-error --max-time 5 --noproxy '*' --insecure --output /dev/null \
    --dump-header - --header "Host: $HEALTHCHECK_HOST" "$HEALTHCHECK_URL" 2>&1)
if [ $? -ne 0 ]; then
    echo "unhealthy: nginx does not answer at $HEALTHCHECK_URL: ${headers##*$'\n'}"
    exit 1
fi
if ! grep -qi '^x-devtest-router: *unknown-host' <<<"$headers"; then
    status=$(head -n 1 <<<"$headers" | tr -d '\r')
    echo "unhealthy: $HEALTHCHECK_URL answers ($status) without devtest-router's unknown-host" \
        "page: the watcher has not applied a config yet, or another server is the default"
    exit 1
fi
pid=$(cat "$FRONTEND_RUN_DIR/watcher.pid" 2>/dev/null)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "unhealthy: the watcher is not running (pid file $FRONTEND_RUN_DIR/watcher.pid: ${pid:-none})"
    exit 1
fi
echo "healthy: nginx serves devtest-router's config; watcher pid $pid"
