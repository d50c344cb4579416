#!/usr/bin/env bash
# The demo: an embedded Kafka cluster with orders:8 and payments:4, steady traffic from `sluice produce`,
# and Examples/OrderService consuming both through Sluice, printing a summary each second, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build -c release --product sluice >&2
swift build -c release --product OrderService >&2
SLUICE=.build/release/sluice
WORK=$(mktemp -d)
BROKER_PID=""
PRODUCER_PIDS=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${PRODUCER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -n "$BROKER_PID" ] && kill -TERM "$BROKER_PID" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
    echo "demo: stopped" >&2
    exit 0
}
trap cleanup EXIT
trap ':' INT

# The broker and producers run in their own session, so Ctrl-C reaches only the consumer; the trap stops
# them after the consumer has committed and left the group.
# The control and audit topics of OrderService's group (the mock broker has no CreateTopics to make them).
setsid "$SLUICE" dev-broker --topic orders:8 --topic payments:4 --topic orders.dlq:1 \
    --topic __sluice-control-order-service:1 --topic __sluice-audit-order-service:1 >"$WORK/bootstrap" 2>"$WORK/broker.log" </dev/null &
BROKER_PID=$!
for _ in $(seq 1 100); do
    [ -s "$WORK/bootstrap" ] && break
    sleep 0.1
done
BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$WORK/bootstrap")
[ -n "$BOOTSTRAP" ] || { echo "demo: the dev broker did not start; see $WORK/broker.log" >&2; exit 1; }
echo "demo: embedded cluster at $BOOTSTRAP (orders:8, payments:4)" >&2

setsid "$SLUICE" produce --bootstrap "$BOOTSTRAP" --topic orders --count 100000000 --rate "${ORDERS_RATE:-2000}" --keys 200 \
    2>"$WORK/produce-orders.log" &
PRODUCER_PIDS+=($!)
setsid "$SLUICE" produce --bootstrap "$BOOTSTRAP" --topic payments --count 100000000 --rate "${PAYMENTS_RATE:-500}" --keys 50 \
    2>"$WORK/produce-payments.log" &
PRODUCER_PIDS+=($!)
echo "demo: producing ${ORDERS_RATE:-2000} orders/s and ${PAYMENTS_RATE:-500} payments/s; Ctrl-C stops" >&2

# Runtime flags: edit this file while the demo runs (see BreakerAndFlags in the Sluice documentation), e.g. `echo 'orders: off' > .sluice/demo-flags.yaml`.
mkdir -p .sluice
[ -s .sluice/demo-flags.yaml ] || echo '{}' > .sluice/demo-flags.yaml  # an empty flag file is refused at start
echo "demo: flags in .sluice/demo-flags.yaml (try: echo 'orders/3: off' > .sluice/demo-flags.yaml)" >&2

# In the foreground, so Ctrl-C reaches it directly (children started with & ignore SIGINT); it drains,
# commits and leaves the group, then the EXIT trap stops the producers and the broker.
# The admin API listens on 127.0.0.1:8080: `sluice status`, `sluice flags set orders off --token TOKEN`.
# A token of this run's own, never a fixed default.
SLUICE_ADMIN_TOKEN="${SLUICE_ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
echo "demo: the dashboard is at http://127.0.0.1:8080/ (log in with the token $SLUICE_ADMIN_TOKEN to make changes)" >&2
# Operator overrides persist for the length of this demo run only.
SLUICE_KAFKA_BOOTSTRAP="$BOOTSTRAP" SLUICE_FLAGS_FILE=.sluice/demo-flags.yaml SLUICE_ADMIN_TOKEN="$SLUICE_ADMIN_TOKEN" \
SLUICE_ADMIN_STATE_FILE="$WORK/admin-flags.json" \
    .build/release/OrderService \
    --config Examples/OrderService/sluice.yaml --database "$WORK/payments.sqlite" || true
