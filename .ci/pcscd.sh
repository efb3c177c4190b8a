#!/usr/bin/env bash
# Starts pcscd (with the vsmartcard vpcd driver) without systemd and waits until it is
# ready: its client socket exists and the vpcd driver listens for virtual cards.
# Idempotent: if a ready pcscd is already running, it does nothing.
#
# Environment:
#   PCSCD_LOG      log file (default /tmp/cardvm-pcscd.log)
#   PCSCD_ARGS     extra pcscd arguments (e.g. "--debug --apdu")
#   PCSCD_TIMEOUT  seconds to wait for readiness (default 20)
#   VPCD_PORT      vpcd port to wait for (default 35963)
# Exit status 0 when ready, 1 otherwise (with the reason on stderr).
set -euo pipefail

LOG="${PCSCD_LOG:-/tmp/cardvm-pcscd.log}"
TIMEOUT="${PCSCD_TIMEOUT:-20}"
PORT="${VPCD_PORT:-35963}"
RUNDIR=/run/pcscd
SOCKET="$RUNDIR/pcscd.comm"

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi

PCSCD="$(command -v pcscd || true)"
if [ -z "$PCSCD" ] && [ -x /usr/sbin/pcscd ]; then PCSCD=/usr/sbin/pcscd; fi
if [ -z "$PCSCD" ]; then
    echo "pcscd.sh: pcscd is not installed (apt-get install pcscd vsmartcard-vpcd)" >&2
    exit 1
fi

# A live pcscd (a killed one may linger as a zombie until reaped).
running() { ps -C pcscd -o stat= 2>/dev/null | grep -qv "^Z"; }
listening() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .
    else
        # /proc/net/tcp{,6}: local address ends in :PORT (hex), state 0A = LISTEN.
        local hex
        hex=$(printf '%04X' "$PORT")
        cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {f=1} END {exit !f}'
    fi
}
ready() { running && [ -S "$SOCKET" ] && listening; }

if ready; then
    echo "pcscd.sh: pcscd already running and ready" >&2
    exit 0
fi

if ! running; then
    # A stale pid file or socket from a killed daemon makes pcscd refuse to start.
    $SUDO rm -f "$RUNDIR/pcscd.pid" "$SOCKET"
    $SUDO mkdir -p "$RUNDIR"
    # shellcheck disable=SC2086
    nohup $SUDO setsid "$PCSCD" --foreground ${PCSCD_ARGS:-} >"$LOG" 2>&1 </dev/null &
fi

deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if ready; then
        echo "pcscd.sh: pcscd ready (vpcd on port $PORT, log $LOG)" >&2
        exit 0
    fi
    sleep 0.2
done

echo "pcscd.sh: pcscd not ready after ${TIMEOUT}s (running: $(running && echo yes || echo no), socket: $([ -S "$SOCKET" ] && echo yes || echo no), vpcd port $PORT listening: $(listening && echo yes || echo no)); see $LOG" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1
