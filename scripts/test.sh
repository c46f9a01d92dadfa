#!/usr/bin/env bash
# Every test: `cargo test` (arguments passed on), after installing what the tests need
# beyond the Rust toolchain: nats-server, which the shard tests (tests/daemon/shards.rs, SPEC
# section 10) start on loopback. Installed from Debian's packages when missing (as root, or
# with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "scripts/test.sh: installing nats-server (the shard tests start one on loopback)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends nats-server >/dev/null 2>&1 ||
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends nats-server >/dev/null; }
fi

cargo test "$@"
