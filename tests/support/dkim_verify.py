#!/usr/bin/env python3
"""Verify the DKIM signature of one mail with dkimpy, an implementation
independent of the mailer's (lettre), handing it the public key instead of a
DNS lookup.

    dkim_verify.py MAIL.eml PUBLIC.pem --domain DOMAIN --selector SELECTOR

PUBLIC.pem is the key as `openssl pkey -pubout` writes it (RSA or Ed25519);
the script turns it into the TXT record DNS would hold. Exits 0 and prints
"pass" when the signature verifies for that domain and selector.
"""
import argparse
import base64
import sys

import dkim

# The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw
# 32-byte key follows, and RFC 8463 puts only that into the record.
ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")


def record(pem: str) -> bytes:
    der = base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))
    if der.startswith(ED25519_SPKI):
        return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[len(ED25519_SPKI):])
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("eml")
    p.add_argument("public")
    p.add_argument("--domain", required=True)
    p.add_argument("--selector", required=True)
    a = p.parse_args()
    txt = record(open(a.public).read())
    wanted = f"{a.selector}._domainkey.{a.domain}.".encode()
    asked = []

    def dns(name, timeout=5):
        asked.append(name)
        return txt if name == wanted else None

    message = open(a.eml, "rb").read()
    ok = dkim.verify(message, dnsfunc=dns)
    if ok and asked == [wanted]:
        print("pass")
        return 0
    print(f"fail: verified={ok}, looked up {asked!r}, wanted {wanted!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
