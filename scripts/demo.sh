#!/usr/bin/env bash
# Runs substation's demo. Needs only the Rust toolchain.
# Usage: scripts/demo.sh [--duration <secs>] [--port <port>] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure protoc protobuf-compiler # etcd-client, a default feature, generates code with it
exec cargo run --quiet --example demo --features dashboard -- "$@"
