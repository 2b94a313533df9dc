#!/usr/bin/env python3
"""Consume the account service's events with a stock AMQP client (pika).

This is how a service in another language (billing, CRM, analytics) follows
accounts: it declares the topic exchange `<prefix>.account` (the account
service declares it too; the declarations agree), binds a queue of its own
with `account.#`, de-duplicates on the event id (delivery is at least once)
and validates each event against shared/schema/account.event.v1.schema.json.

    consume_account_events.py --prefix PREFIX --count N [--timeout 60] \
        [--url amqp://guest:guest@127.0.0.1:5672/%2f] [--schema PATH]

Prints `ready` once its queue is bound, then one JSON line per distinct
event: {"routing_key": ..., "event": {...}}. Exits 0 after N distinct
events, 1 on an event that breaks the contract, 2 on timeout.
"""
import argparse
import json
import os
import sys
import time

import jsonschema
import pika

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA = os.path.join(HERE, "../../shared/schema/account.event.v1.schema.json")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--prefix", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--schema", default=DEFAULT_SCHEMA)
    a = p.parse_args()

    with open(a.schema) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    exchange = f"{a.prefix}.account" if a.prefix else "account"

    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=queue, exchange=exchange, routing_key="account.#")
    print("ready", flush=True)

    seen = set()
    deadline = time.monotonic() + a.timeout
    while len(seen) < a.count:
        if time.monotonic() > deadline:
            print(f"timeout after {len(seen)} of {a.count} events", file=sys.stderr)
            return 2
        method, props, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        try:
            event = json.loads(body)
        except ValueError as e:
            print(f"not JSON: {e}: {body!r}", file=sys.stderr)
            return 1
        errors = sorted(validator.iter_errors(event), key=str)
        if errors:
            print(f"breaks the schema: {errors[0].message}: {event}", file=sys.stderr)
            return 1
        problems = []
        if method.routing_key != f"account.{event['type']}":
            problems.append(f"routing key {method.routing_key} for type {event['type']}")
        if props.message_id != event["id"]:
            problems.append(f"message_id {props.message_id} is not the id")
        if props.content_type != "application/json":
            problems.append(f"content type {props.content_type}")
        if problems:
            print(f"{'; '.join(problems)}: {event}", file=sys.stderr)
            return 1
        if event["id"] in seen:
            continue  # at least once: a copy
        seen.add(event["id"])
        print(json.dumps({"routing_key": method.routing_key, "event": event}), flush=True)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
