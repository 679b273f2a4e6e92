#!/usr/bin/env bash
# Start a ClickHouse server for the postwise ClickHouse tests and benchmarks.
#
# Installs Debian's clickhouse-server with apt-get when it is missing, then runs it in the
# background (there is no systemd here) with a minimal config of our own: native protocol on
# 127.0.0.1:9000 (what clickhouse-driver speaks), HTTP on 127.0.0.1:8123, data under
# $POSTWISE_CLICKHOUSE_DIR. Waits until the server answers a query. Idempotent: a server already
# answering on the port is left as it is.
set -euo pipefail

CH_DIR="${POSTWISE_CLICKHOUSE_DIR:-/var/tmp/postwise-clickhouse}"
CH_PORT="${POSTWISE_CLICKHOUSE_PORT:-9000}"
CH_HTTP_PORT="${POSTWISE_CLICKHOUSE_HTTP_PORT:-8123}"

answers() {
    # The HTTP interface's /ping answers "Ok." once the server accepts queries (the native
    # port opens at the same time). Standard library only: this runs before any pip install.
    python3 - "$CH_HTTP_PORT" <<'PY' >/dev/null 2>&1
import sys
import urllib.request

with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ping", timeout=2) as reply:
    sys.exit(0 if reply.read().strip() == b"Ok." else 1)
PY
}

if answers; then
    echo "clickhouse: already answering on 127.0.0.1:${CH_PORT}"
    exit 0
fi

if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ]; then
    echo "clickhouse: installing clickhouse-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clickhouse-server >/dev/null
fi
SERVER="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"

mkdir -p "$CH_DIR/data" "$CH_DIR/tmp" "$CH_DIR/user_files" "$CH_DIR/log"
cat > "$CH_DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$CH_DIR/log/clickhouse-server.log</log>
        <errorlog>$CH_DIR/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$CH_PORT</tcp_port>
    <http_port>$CH_HTTP_PORT</http_port>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>536870912</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML

echo "clickhouse: starting $SERVER (data in $CH_DIR)"
nohup "$SERVER" --config-file="$CH_DIR/config.xml" >"$CH_DIR/log/stdout.log" 2>&1 &
echo $! > "$CH_DIR/server.pid"

for _ in $(seq 1 60); do
    if answers; then
        echo "clickhouse: answering on 127.0.0.1:${CH_PORT}"
        exit 0
    fi
    if ! kill -0 "$(cat "$CH_DIR/server.pid")" 2>/dev/null; then
        echo "clickhouse: the server exited; its log:" >&2
        tail -n 30 "$CH_DIR/log/stdout.log" "$CH_DIR/log/clickhouse-server.err.log" >&2 || true
        exit 1
    fi
    sleep 1
done
echo "clickhouse: no answer on 127.0.0.1:${CH_PORT} after 60 s" >&2
tail -n 30 "$CH_DIR/log/clickhouse-server.err.log" >&2 || true
exit 1
