#!/bin/sh
# An example service container's entrypoint: `devtest-router register -- CMD` starts CMD,
# registers NAME/SERVICE at IP:PORT in REGISTRY_URL once CMD answers on PORT, keeps the keys
# alive, deregisters on SIGTERM (then passes it on to CMD) and exits with CMD's status.
# Without REGISTRY_URL (a plain local run) CMD runs unregistered.
#
# Where the values come from (devtest-router register --help): NAME (the branch), SERVICE,
# REGISTRY_URL from the container's environment; PORT is the port CMD listens on inside the
# container; IP if set, else ECS task metadata (bridge mode: the host's address and the host
# port mapped to PORT), else EC2 instance metadata.
set -eu

ROUTER_BIN=${ROUTER_BIN:-devtest-router}

if [ -z "${REGISTRY_URL:-}" ]; then
    echo "service: REGISTRY_URL is not set: running $1 without registering" >&2
    exec "$@"
fi
exec "$ROUTER_BIN" register -- "$@"
