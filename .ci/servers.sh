#!/usr/bin/env bash
# Start or stop the real test servers (moto, kinesis-mock, kinesalite, Tansu) on 127.0.0.1.
#   .ci/servers.sh start ENV_FILE   # writes STREAMFN_TEST_* lines to ENV_FILE (source it with set -a)
#   .ci/servers.sh stop ENV_FILE    # stops what ENV_FILE.pids names
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ] || { [ "$1" != start ] && [ "$1" != stop ]; }; then
    echo "usage: $0 start|stop ENV_FILE" >&2
    exit 2
fi
PY=${PY:-.venv/bin/python}
exec "$PY" -m tests.servers "$1" --env-file "$2"
