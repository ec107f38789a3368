#!/usr/bin/env bash
# Starts the example echo backend and switchyard on the example manifests.
# Try it from another terminal:
#   curl -H 'Host: echo.localhost' http://127.0.0.1:8080/hello
#   curl http://127.0.0.1:9090/routes
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --example echo --bin switchyard
target/debug/examples/echo 127.0.0.1:9000 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null' EXIT
target/debug/switchyard run --manifests examples/manifests "$@"
