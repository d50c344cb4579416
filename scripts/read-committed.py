#!/usr/bin/env python3
"""Reads TOPIC from the start as a read_committed consumer of its own group (confluent-kafka, librdkafka 2.16: a
client independent of Sluice) and prints, per record, the input position its headers name: "PARTITION OFFSET",
one line each. Stops once UNTIL distinct positions were read and nothing came for IDLE seconds, or after TIMEOUT.

    PYTHONPATH=$(scripts/ensure-confluent-kafka.sh) scripts/read-committed.py BOOTSTRAP TOPIC UNTIL IDLE TIMEOUT
"""
import sys
import time
import uuid

from confluent_kafka import Consumer

bootstrap, topic, until, idle, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "read-committed-" + uuid.uuid4().hex,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
})
consumer.subscribe([topic])
seen = set()
start = last = time.monotonic()
while time.monotonic() - start < timeout:
    message = consumer.poll(0.25)
    now = time.monotonic()
    if message is None:
        if len(seen) >= until and now - last >= idle:
            break
        continue
    if message.error():
        continue
    last = now
    headers = {key: value.decode() for key, value in (message.headers() or []) if value is not None}
    position = (headers.get("input.partition", "-1"), headers.get("input.offset", "-1"))
    seen.add(position)
    print(position[0], position[1], flush=True)
consumer.close()
