#!/usr/bin/env bash
# Runs substation's whole test suite: formatting, lints, unit and integration tests,
# doc tests and the examples' self-checking quick modes. Installs what a fresh Debian
# machine with only the Rust toolchain lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
. scripts/lib.sh

step "tools: protoc (etcd-client's build), etcd and etcdctl (the integration tests)"
ensure protoc protobuf-compiler
ensure etcd etcd-server
ensure etcdctl etcd-client
# The etcd suites skip themselves where etcd cannot be run; here that is a failure.
export SUBSTATION_REQUIRE_ETCD=1

step "tools: headless Chromium and chromedriver (the dashboard's browser test)"
ensure chromium chromium
ensure chromedriver chromium-driver
# Likewise the browser test skips without a browser, except here.
export SUBSTATION_REQUIRE_BROWSER=1

step "formatting"
cargo fmt --all -- --check

step "lints (clippy, all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "the library builds without optional features"
cargo check --quiet -p substation --no-default-features --lib

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p substation --all-features --no-fail-fast
else
  cargo test -p substation --all-features --no-fail-fast --lib --tests
fi

step "doc tests"
cargo test -p substation --all-features --doc

# Every example below runs with --all-features, as the tests were built: one build of
# the library (and the examples, which `cargo nextest run` already compiled) serves
# them all, instead of one more library, 1-2 minutes and hundreds of MB per feature set.

step "the propagation example loses no write (quick mode: 5 watchers, 200 writes)"
cargo run --quiet --all-features --example propagation -- --watchers 5 --writes 200

step "fleet presence at small scale: 50 instances announce, confirm every write, withdraw on drop"
cargo run --quiet --all-features --example fleet_scale -- --instances 50 --steady 3 --writes 5

step "the substation CLI builds and answers (its integration tests ran above: tests/cli.rs)"
cargo run --quiet --all-features --bin substation -- schema policy >/dev/null
cargo run --quiet --all-features --bin substation -- validate --offline --for policies/payments - <<<'{"kill": true}'

step "the hyper example tells its story (breaker opens, cache serves, breaker closes)"
cargo run --quiet --all-features --example http_client -- --quick

step "retries recover a flaky hyper upstream, hedging cuts a slow tail (real server, real client)"
cargo run --quiet --all-features --example retry_hedge -- --quick

step "the experiment example tells its story (passed with a good fallback; aborted without one)"
cargo run --quiet --all-features --example experiment -- --quick

step "the tonic example tells its story (server killed: breaker opens, fallback answers; server back: recovery)"
cargo run --quiet --all-features --example grpc_client -- --quick

step "etcdctl put changes behaviour live (kill switch, rollout, injected fault)"
cargo run --quiet --all-features --example etcd_switches

step "the dashboard example tells its story through /status (breaker opens and closes, kill, outage, rejection, rollout)"
cargo run --quiet --all-features --example dashboard -- --quick

step "the demo tells its story (it fails if the breaker does not open and close)"
cargo run --quiet --all-features --example demo -- --duration 10

step "done; target/ holds $(du -sh target 2>/dev/null | cut -f1)"
