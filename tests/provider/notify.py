#!/usr/bin/env python3
"""A payment provider, as a separate process: it tells the card company that a recharge
order was paid, signing with its own RSA key through OpenSSL (RSA PKCS#1 v1.5 over
SHA-256), exactly as docs/clearing.md specifies. Used by tests/paid_first.rs.

notify.py URL CA_PEM PROVIDER_ID KEY_PEM ORDER_ID AMOUNT PROVIDER_REF
Prints the HTTP status and the answer's body on one line."""
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request


def main():
    url, ca, provider, key, order, amount, ref = sys.argv[1:8]
    body = json.dumps(
        {"order_id": order, "amount": int(amount), "provider_ref": ref, "status": "paid"}
    ).encode()
    now = str(int(time.time()))
    signed = f"cardvm-provider-v1\n{provider}\n{now}\n".encode() + body
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key, "-binary"],
        input=signed,
        capture_output=True,
        check=True,
    ).stdout.hex()
    req = urllib.request.Request(
        url + "/v1/provider/notify",
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "x-cardvm-provider": provider,
            "x-cardvm-time": now,
            "x-cardvm-signature": sig,
        },
    )
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            print(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode())


if __name__ == "__main__":
    main()
