#!/usr/bin/env python3
"""Verify a Beacon webhook request the Standard Webhooks way, with the standard library only.

A receiver calls ``verify(secret, headers, body)`` on every request before trusting it:

- the signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, the body exactly as
  received (bytes, before any JSON parsing);
- the key is the base64-decoded part of the secret after ``whsec_``;
- ``webhook-signature`` holds one or more space-separated ``v1,<base64>`` entries; one must
  equal the HMAC-SHA256 computed here (compared in constant time);
- ``webhook-timestamp`` must be within ``tolerance`` seconds (5 minutes) of now, so a captured
  request cannot be replayed later; deduplicate by ``webhook-id`` to stop replays inside it.

Run as a program, it checks one captured request:

    scripts/verify-webhook.py --secret whsec_... capture.json [--now UNIX_SECONDS]

where ``capture.json`` is ``{"headers": {"webhook-id": ..., ...}, "body": "..."}``. It prints
``verified`` and exits 0, or prints why not and exits 1.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time

TOLERANCE_S = 5 * 60


class VerificationError(Exception):
    """The request is not a genuine, fresh delivery."""


def verify(secret, headers, body, tolerance=TOLERANCE_S, now=None):
    """Raise VerificationError unless the request is signed with ``secret`` and fresh.

    ``headers`` maps lower-case header names to values; ``body`` is the raw body (bytes or str).
    Returns the parsed JSON body once verified.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        msg_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError as missing:
        raise VerificationError(f"missing header {missing}") from None

    try:
        sent_at = int(timestamp)
    except ValueError:
        raise VerificationError("webhook-timestamp is not Unix seconds") from None
    now = int(time.time()) if now is None else now
    if abs(now - sent_at) > tolerance:
        raise VerificationError("webhook-timestamp outside the tolerance")

    if not secret.startswith("whsec_"):
        raise VerificationError("the secret must start with whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = msg_id.encode("utf-8") + b"." + timestamp.encode("utf-8") + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())

    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("ascii"), expected):
            return json.loads(body)
    raise VerificationError("no matching signature")


def main():
    parser = argparse.ArgumentParser(description="Verify a captured Beacon webhook request.")
    parser.add_argument("--secret", required=True, help="the endpoint's whsec_... secret")
    parser.add_argument("--now", type=int, help="the current time in Unix seconds (tests)")
    parser.add_argument("capture", help='JSON file: {"headers": {...}, "body": "..."}')
    args = parser.parse_args()
    with open(args.capture, encoding="utf-8") as f:
        capture = json.load(f)
    headers = {name.lower(): value for name, value in capture["headers"].items()}
    try:
        event = verify(args.secret, headers, capture["body"], now=args.now)
    except VerificationError as why:
        print(f"not verified: {why}")
        return 1
    print(f"verified: {event['type']} {event['data']['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
