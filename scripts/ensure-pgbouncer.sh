#!/usr/bin/env bash
# Installs Debian's pgbouncer when it is missing (called by .ci/run before `npm test`; CI runs as
# root on a fresh machine). The tests start their own PgBouncer instances on free ports
# (test-support/pgbouncer.js), so the package's own service is never needed: if the package
# started it (on 6432), it is stopped and disabled, so that no stray pooler runs in the
# background of the tests.
set -euo pipefail

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-pgbouncer: pgbouncer is missing; install Debian's pgbouncer (apt-get install pgbouncer) as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold pgbouncer
fi

# The Debian package's service (it may have started when no policy-rc.d forbids it).
if [ -x /etc/init.d/pgbouncer ] && [ -f /var/run/postgresql/pgbouncer.pid ]; then
  /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now pgbouncer >/dev/null 2>&1 || true
fi

pgbouncer_bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
echo "ensure-pgbouncer: $("$pgbouncer_bin" --version | head -n 1)"

# A current PgBouncer (1.25.2), for protocol-level named statements through a transaction pooler
# (max_prepared_statements), built once from the workplace's source tarball into a cache outside
# the checkout (PGBOUNCER125_TARBALL overrides where the tarball is; PGBOUNCER125_PREFIX where it
# goes). test-support/pgbouncer.js finds it there.
repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PGBOUNCER125_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/medusa-idempotency-native/pgbouncer-1.25.2}
if [ ! -x "$prefix/bin/pgbouncer" ]; then
  tools=""
  for d in "${PGBOUNCER125_TOOLS:-}" "$repo/../shared/tools/pgbouncer" /work/shared/tools/pgbouncer; do
    if [ -n "$d" ] && [ -f "$d/build.sh" ] && [ -f "$d/pgbouncer-1.25.2.tar.gz" ]; then tools=$d; break; fi
  done
  if [ -z "$tools" ]; then
    echo "ensure-pgbouncer: PgBouncer 1.25.2's source tarball and build.sh were not found (set PGBOUNCER125_TOOLS)" >&2
    exit 1
  fi
  build=$(mktemp -d "${TMPDIR:-/tmp}/pgbouncer-build.XXXXXX")
  sh "$tools/build.sh" "${PGBOUNCER125_TARBALL:-$tools/pgbouncer-1.25.2.tar.gz}" "$prefix" "$build" >"$build.log" 2>&1 || {
    tail -n 40 "$build.log" >&2
    exit 1
  }
  rm -rf "$build" "$build.log"
fi
echo "ensure-pgbouncer: $("$prefix/bin/pgbouncer" --version | head -n 1) at $prefix/bin/pgbouncer"
