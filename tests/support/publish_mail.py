#!/usr/bin/env python3
"""Publish one raw mail.send v1 event with a stock AMQP client (pika).

This is how a service in another language hands mail to the mailer; the
end-to-end tests use it to prove the contract works without our Rust types.

    publish_mail.py --to someone@example.com --subject "Hi" --html "<p>Hi</p>" \
        --text "Hi" [--prefix PREFIX] [--url amqp://guest:guest@127.0.0.1:5672/%2f]

Prints the event id on success; exits non-zero if the broker did not confirm
or could not route the message.
"""
import argparse
import datetime
import json
import sys
import uuid

import pika


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--prefix", default="")
    p.add_argument("--to", required=True)
    p.add_argument("--name")
    p.add_argument("--locale", default="en")
    p.add_argument("--subject", required=True)
    p.add_argument("--html", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--source", default="publish_mail.py")
    a = p.parse_args()

    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "version": 1,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "source": a.source,
        "to": {"email": a.to, **({"name": a.name} if a.name else {})},
        "locale": a.locale,
        "content": {"subject": a.subject, "html": a.html, "text": a.text},
    }
    exchange = f"{a.prefix}.mail" if a.prefix else "mail"
    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            exchange=exchange,
            routing_key="mail.send",
            body=json.dumps(event, ensure_ascii=False).encode("utf-8"),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=event_id,
            ),
            mandatory=True,
        )
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        print(f"not delivered to the broker: {e!r}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(event_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
