#!/usr/bin/env bash
# The frontend container's main process (under tini): nginx, then `devtest-router watch` beside
# it, reloading this nginx. SIGTERM or SIGINT stops both; if either exits, the other is stopped
# and the container exits non-zero, so the platform restarts it.
#
# The watcher takes its settings from the environment as always: REGISTRY_URL,
# DEVTEST_ROUTER_DOMAIN, DEVTEST_ROUTER_LISTEN, DEVTEST_ROUTER_OUTPUT, ... (devtest-router watch --help).
# In the image it runs as the image's USER (uid 10001), and so do nginx (which binds 80 and 443
# through its file capability) and the watcher, which reloads nginx with a signal of its own user.
# Every path and binary below can be overridden, so the script also runs outside Docker (the
# tests run it on a loopback port, as root and as `nobody`).
set -euo pipefail

NGINX_BIN=${NGINX_BIN:-nginx}
NGINX_CONF=${NGINX_CONF:-/etc/nginx/nginx.conf}
NGINX_PREFIX=${NGINX_PREFIX:-}          # nginx -p; empty: nginx's compiled-in prefix
# nginx -e: where nginx logs before it has read NGINX_CONF (whose error_log is stderr too);
# empty: nginx's compiled-in path, which an unprivileged user cannot open.
NGINX_ERROR_LOG=${NGINX_ERROR_LOG-stderr}
NGINX_PID_FILE=${NGINX_PID_FILE:-/run/devtest-router/nginx.pid}  # must be the `pid` of NGINX_CONF
ROUTER_BIN=${ROUTER_BIN:-devtest-router}
FRONTEND_RUN_DIR=${FRONTEND_RUN_DIR:-/run/devtest-router}  # watcher.pid, for the health check
NGINX_START_TIMEOUT=${NGINX_START_TIMEOUT:-30}            # seconds

say() { echo "frontend: $*" >&2; }

nginx_argv=("$NGINX_BIN" -c "$NGINX_CONF")
if [ -n "$NGINX_PREFIX" ]; then nginx_argv+=(-p "$NGINX_PREFIX"); fi
if [ -n "$NGINX_ERROR_LOG" ]; then nginx_argv+=(-e "$NGINX_ERROR_LOG"); fi
# The watcher tests and reloads exactly this nginx (commands are split like a shell, no shell).
printf -v nginx_command '%q ' "${nginx_argv[@]}"
export DEVTEST_ROUTER_NGINX=${DEVTEST_ROUTER_NGINX:-$NGINX_BIN}
export DEVTEST_ROUTER_TEST_COMMAND=${DEVTEST_ROUTER_TEST_COMMAND:-"${nginx_command}-t -q"}
export DEVTEST_ROUTER_RELOAD_COMMAND=${DEVTEST_ROUTER_RELOAD_COMMAND:-"${nginx_command}-s reload"}

nginx_pid='' watcher_pid=''
stop() {
    trap '' TERM INT
    say "$1: stopping the watcher and nginx"
    if [ -n "$watcher_pid" ]; then kill -TERM "$watcher_pid" 2>/dev/null || true; fi
    # SIGQUIT: a graceful stop; open connections get worker_shutdown_timeout at most.
    if [ -n "$nginx_pid" ]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; fi
    wait
    rm -f "$FRONTEND_RUN_DIR/watcher.pid"
}
trap 'stop "SIGTERM received"; exit 0' TERM
trap 'stop "SIGINT received"; exit 0' INT

"${nginx_argv[@]}" -t -q || { say "nginx rejects $NGINX_CONF (above); not starting"; exit 1; }
rm -f "$NGINX_PID_FILE"
"${nginx_argv[@]}" -g 'daemon off;' &
nginx_pid=$!
# The watcher's first apply reloads nginx through its pid file: wait until nginx has written it.
for _ in $(seq $((NGINX_START_TIMEOUT * 10))); do
    [ "$(cat "$NGINX_PID_FILE" 2>/dev/null)" = "$nginx_pid" ] && break
    kill -0 "$nginx_pid" 2>/dev/null || break
    sleep 0.1
done
if [ "$(cat "$NGINX_PID_FILE" 2>/dev/null)" != "$nginx_pid" ]; then
    stop "nginx (pid $nginx_pid) did not start or did not write $NGINX_PID_FILE"
    exit 1
fi
say "nginx started (pid $nginx_pid)"

mkdir -p "$FRONTEND_RUN_DIR"
"$ROUTER_BIN" watch &
watcher_pid=$!
echo "$watcher_pid" > "$FRONTEND_RUN_DIR/watcher.pid"
say "devtest-router watch started (pid $watcher_pid)"

# Either one ending ends the container; the trap handles SIGTERM/SIGINT meanwhile.
status=0
wait -n "$nginx_pid" "$watcher_pid" || status=$?
if kill -0 "$nginx_pid" 2>/dev/null; then gone="the watcher"; else gone="nginx"; fi
stop "$gone exited (status $status)"
exit $((status == 0 ? 1 : status))
