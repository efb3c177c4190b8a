#!/usr/bin/env bash
# Runs every cargo-fuzz target for $1 seconds (default 20) and prints a summary line per
# target: executions, corpus size, crashes. Installs cargo-fuzz from crates.io when it is
# missing; on a stable toolchain the sanitizer flags need RUSTC_BOOTSTRAP=1. New inputs go
# to a temporary directory: the committed corpus is not modified. Exit 1 on any crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
fuzz=(cargo fuzz)
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
fi
"${fuzz[@]}" build -O
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for target in $("${fuzz[@]}" list); do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if "${fuzz[@]}" run -O "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=1536 -timeout=10 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed=1
        tail -n 60 "$log"
        echo "fuzz target $target failed (reproduce: cd fuzz && cargo fuzz run $target <artifact>)"
    fi
    done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)"
    execs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' <<<"$done_line")"
    corpus="$(ls "$work/$target" | wc -l)"
    echo "fuzz: $target: ${execs:-?} executions in ${secs} s, $corpus new corpus inputs, $status"
done
exit "$failed"
