"""Consume healthprobe's health events: a durable JetStream pull consumer with explicit
acks, idempotent by event_id.

Delivery is at least once. A message comes again when its ack was lost (the consumer died
after acting, before acking) and, rarely, when the worker published an event again after
JetStream's duplicate window. The event_id is the idempotency key: each one is recorded in
the same transaction as what the consumer does about it, so a second delivery is recognised
and acknowledged without acting twice.

    python3 -m venv venv && venv/bin/pip install -r requirements.txt
    NATS_URL=nats://127.0.0.1:4222 venv/bin/python consumer.py --state processed.db

Prints one JSON line per message: {"outcome": "handled" | "duplicate" | "rejected",
"event_id", "event_type", "game_id", "container_id", "delivered"}.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import sys

import nats
from nats.errors import TimeoutError as FetchTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

EVENT_TYPES = {"probe_failed", "probe_recovered"}


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env = os.environ.get
    parser.add_argument("--nats-url", default=env("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--stream", default=env("HEALTHPROBE_STREAM", "RUNTIME_HEALTH"))
    parser.add_argument("--subject-prefix", default=env("HEALTHPROBE_SUBJECT_PREFIX", "runtime.health"))
    parser.add_argument("--durable", default="runtime-manager", help="durable consumer name")
    parser.add_argument("--state", default="processed-events.db", help="SQLite file of handled event ids")
    parser.add_argument("--ack-wait", type=float, default=30.0, help="seconds before an unacked message comes again")
    parser.add_argument("--max-events", type=int, default=0, help="exit after this many messages (0: never)")
    parser.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    return parser.parse_args()


class Processed:
    """The event ids already acted upon. In a real consumer this table lives in the same
    database as the consumer's own state, written in the same transaction."""

    def __init__(self, path):
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS processed_events (event_id TEXT PRIMARY KEY, event_type TEXT, game_id TEXT)"
        )
        self.db.commit()

    def act_once(self, event, act):
        """Runs `act` and records the event id in one transaction; False when the id was
        already recorded (nothing is done again)."""
        with self.db:  # one transaction: commit on success, rollback on an exception
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO processed_events VALUES (?, ?, ?)",
                (event["event_id"], event["event_type"], event["game_id"]),
            )
            if cursor.rowcount == 0:
                return False
            act(event)
            return True


def decode(data):
    """The envelope, or None when it is not one (such a message is terminated, not retried)."""
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event_type") not in EVENT_TYPES:
        return None
    if not all(isinstance(event.get(k), str) and event.get(k) for k in ("event_id", "game_id")):
        return None
    return event


def act(event):
    """What a runtime manager would do: restart on probe_failed, clear on probe_recovered."""
    # A real consumer calls its own service here; this example only reports (to stderr).
    verb = "restart" if event["event_type"] == "probe_failed" else "mark healthy"
    print(f"consumer: {verb} game {event['game_id']} (container {event.get('container_id') or '-'})", file=sys.stderr)


def report(outcome, event, delivered):
    line = {"outcome": outcome, "delivered": delivered}
    for key in ("event_id", "event_type", "game_id", "container_id"):
        line[key] = (event or {}).get(key)
    print(json.dumps(line), flush=True)


async def main():
    args = arguments()
    processed = Processed(args.state)
    nc = await nats.connect(args.nats_url, name=f"healthprobe-example-{args.durable}")
    js = nc.jetstream()
    subscription = await js.pull_subscribe(
        f"{args.subject_prefix}.>",
        durable=args.durable,
        stream=args.stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=args.ack_wait,
            max_ack_pending=1000,
        ),
    )
    seen = 0
    idle = 0.0
    try:
        while args.max_events == 0 or seen < args.max_events:
            # Never fetch more than is left to handle: what is fetched and not acked would
            # only come back after ack_wait.
            batch = 10 if args.max_events == 0 else min(10, args.max_events - seen)
            try:
                messages = await subscription.fetch(batch, timeout=1)
            except FetchTimeout:
                idle += 1
                if args.idle_exit and idle >= args.idle_exit:
                    break
                continue
            idle = 0.0
            for message in messages:
                seen += 1
                delivered = message.metadata.num_delivered
                event = decode(message.data)
                if event is None:
                    report("rejected", None, delivered)
                    await message.term()
                    continue
                outcome = "handled" if processed.act_once(event, act) else "duplicate"
                # Acknowledged only after the outcome is committed, and confirmed by the
                # server: an exit right after this loses nothing and repeats nothing.
                await message.ack_sync()
                report(outcome, event, delivered)
    finally:
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
