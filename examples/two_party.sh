#!/usr/bin/env bash
# A two-party online recharge on one machine: the card company (CA, master keys, ledger,
# HTTPS service) and a reader (key pair, certificate, client) recharging a simulated card.
# Run from the repository root: bash examples/two_party.sh   (needs openssl for the TLS
# certificate). CARDVM may name the binary (default: cargo build, then target/debug/cardvm).
set -euo pipefail
repo="$(pwd)"
if [ -z "${CARDVM:-}" ]; then
    cargo build -q; CARDVM="${CARGO_TARGET_DIR:-$repo/target}/debug/cardvm"
    case "$CARDVM" in /*) ;; *) CARDVM="$repo/$CARDVM" ;; esac
fi
cardvm() { "$CARDVM" "$@"; }
work="$(mktemp -d)"; cd "$work"
# On failure the work folder (with the service's log) is kept and named.
trap 'status=$?; if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null || true; fi
      if [ $status -eq 0 ]; then rm -rf "$work"; else echo "two_party.sh: failed; see $work/serve.log" >&2; fi' EXIT
export CARDVM_KEYSTORE_PASSPHRASE="demo passphrase"

# Card company: CA, sealing key, city master keys, ledger, city 731. Its loads are
# host-secured: the reader never receives a card key (docs/host.md).
cardvm ca init --dir ca --subject "CN=City Card CA,O=City Card" --days 3650
cardvm ca crl --dir ca --days 7 -o ca.crl
cardvm keygen --out issuer
printf 'alg = "des3"\nload = "11223344556677888877665544332211"\npurchase = "0123456789ABCDEFFEDCBA9876543210"\ntac = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"\n' > m731.toml
cardvm issuer keys init --store issuer.keys
cardvm issuer keys import 731 m731.toml --store issuer.keys
cardvm issuer init --ca ca/ca.crt --crl ca.crl --key issuer.key --keys issuer.keys
cardvm issuer city add 731 --alg des3 --query "$repo/scripts/city0731-des3/query.casm" \
    --load "$repo/scripts/city0731-des3/load_host.cvs" --recover "$repo/scripts/city0731-des3/recover.casm" \
    --purchase "$repo/scripts/city0731-des3/purchase_host.cvs"
# City 755 (SM4) sells offline too: merchants' PSAM terminals run its terminal program
# (inputs amount and time only; the purchase key is in the PSAM: docs/psam.md).
printf 'alg = "sm4"\nload = "0123456789ABCDEFFEDCBA9876543210"\npurchase = "11223344556677888877665544332211"\ntac = "00112233445566778899AABBCCDDEEFF"\n' > m755.toml
cardvm issuer keys import 755 m755.toml --store issuer.keys
cardvm issuer city add 755 --alg sm4 --query "$repo/scripts/city0755-sm4/query.casm" \
    --load "$repo/scripts/city0755-sm4/load_host.cvs" \
    --terminal-purchase "$repo/scripts/city0755-sm4/psam_purchase.cvs"

# Enroll a reader: its key never leaves it; the CA issues from its request.
cardvm reader init --reader-id R1 --dir r1
cardvm ca issue --dir ca --csr r1/R1.csr --days 365 -o R1.crt
cardvm reader install R1.crt --ca ca/ca.crt --dir r1
cardvm issuer reader add R1.crt

# The service, over HTTPS on loopback, on a port the system picks (printed).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout tls.key -out tls.crt 2>/dev/null
"$CARDVM" issuer serve --listen 127.0.0.1:0 --tls-cert tls.crt --tls-key tls.key --quiet 2> serve.log &
server=$!
url=""
for _ in $(seq 1 100); do
    url="$(sed -n 's|.*serving \(https://[^/]*\)/v1.*|\1|p' serve.log | head -n 1)"
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { echo "two_party.sh: the service did not start:" >&2; cat serve.log >&2; exit 1; }
    sleep 0.2
done
[ -n "$url" ] || { echo "two_party.sh: the service did not say where it listens" >&2; cat serve.log >&2; exit 1; }
echo "service at $url"

# A simulated card of city 731 that holds the city's masters, and one recharge of 100.00.
sed -e 's/^master = false/master = true/' \
    -e 's/^load = .*/load = "11223344556677888877665544332211"/' \
    -e 's/^purchase = .*/purchase = "0123456789ABCDEFFEDCBA9876543210"/' \
    -e 's/^tac = .*/tac = "A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"/' \
    "$repo/scripts/city0731-des3/card.toml" > card.toml
cardvm client recharge --server "$url" --server-ca tls.crt --reader-dir r1 \
    --issuer-pub issuer.pub --city 731 --amount 100.00 --sim card.toml
# And pay 2.50 from it online: the card company acts as the terminal's PSAM.
cardvm client purchase --server "$url" --server-ca tls.crt --reader-dir r1 \
    --issuer-pub issuer.pub --city 731 --amount 2.50 --sim card.toml
# A merchant with its own key: the card company registers it, it takes an order, the
# cardholder pays it from home, and the merchant sees it paid (docs/clearing.md).
cardvm keygen --out shop
cardvm issuer merchant add shop --name "Corner Shop" --fee-bp 60 --account "ICBC 6222 0000 1111" --key shop.pub
shop=(--server "$url" --server-ca tls.crt --id shop --key shop.key)
order="$(cardvm merchant order create "${shop[@]}" --merchant-order A-1001 --amount 25.00 \
    --description "Two notebooks" --json | sed -n 's/.*"order_id":"\([^"]*\)".*/\1/p')"
[ -n "$order" ] || { echo "two_party.sh: no order id" >&2; exit 1; }
cardvm client pay --server "$url" --server-ca tls.crt --reader-dir r1 \
    --issuer-pub issuer.pub --city 731 --order "$order" --sim card.toml
cardvm merchant order show "$order" "${shop[@]}"

# The shop's PSAM terminal T1 (its PSAM numbers it 000000000001): it fetches the sealed
# terminal program once, sells 2.50 offline, and uploads its journal later; the sale is
# settled on the card's TAC and credited to the shop (docs/psam.md "Offline purchases").
cardvm reader init --reader-id T1 --dir t1
cardvm ca issue --dir ca --csr t1/T1.csr --days 365 -o T1.crt
cardvm reader install T1.crt --ca ca/ca.crt --dir t1
cardvm issuer reader add T1.crt --terminal 000000000001 --merchant shop
cardvm client terminal-script --server "$url" --server-ca tls.crt --reader-dir t1 --city 755 -o purchase.cvm
cp "$repo/scripts/city0755-sm4/psam_card.toml" card755.toml
cp "$repo/scripts/cards/psam_sm4.toml" psam.toml
cardvm run purchase.cvm --terminal-purchase 2.50 --reader-key t1/reader.key --reader-id T1 \
    --issuer-pub issuer.pub --journal t1/reader.journal --sim card755.toml --sam-sim psam.toml \
    --save --receipt sale.json
cardvm client sync --server "$url" --server-ca tls.crt --reader-dir t1
cardvm issuer ledger
