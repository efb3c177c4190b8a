#!/usr/bin/env bash
# The C ABI under valgrind: builds examples/c/city_load.c against libcardvm.a and runs
# it (a full 3DES load on a simulated card, plus API misuse) under
# `valgrind --leak-check=full --error-exitcode=1`: any leak, invalid read or write, or
# use of uninitialized memory fails. About 2 s of valgrind time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
CARDVM_VALGRIND=1 cargo test -p cardvm-capi --test c_example
