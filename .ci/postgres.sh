#!/usr/bin/env bash
# Starts Debian's PostgreSQL (installed by .ci/run) and creates the role the tests use.
# Prints the URL to export as CARDVM_TEST_PG. No systemd: pg_ctlcluster starts it.
set -euo pipefail
ver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
    pg_createcluster "$ver" main >/dev/null
fi
pg_ctlcluster "$ver" main start 2>/dev/null || true
for _ in $(seq 1 30); do
    if su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1; then break; fi
    sleep 1
done
su postgres -c "psql -qtAc \"DO \\\$\\\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cardvm') THEN
    CREATE ROLE cardvm LOGIN CREATEDB PASSWORD 'cardvm';
  END IF; END \\\$\\\$;\"" >/dev/null
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'cardvm'\"" | grep -q 1 \
    || su postgres -c "createdb -O cardvm cardvm"
echo "postgres://cardvm:cardvm@127.0.0.1:5432/cardvm"
