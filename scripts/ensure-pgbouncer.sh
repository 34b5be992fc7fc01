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
