#!/usr/bin/env bash
# The demo: an embedded Kafka cluster with orders:8 and payments:4, steady traffic from `sluice produce`,
# and a group consumer printing its rate each second, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build -c release --product sluice >&2
SLUICE=.build/release/sluice
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup INT TERM EXIT

"$SLUICE" dev-broker --topic orders:8 --topic payments:4 >"$WORK/bootstrap" 2>"$WORK/broker.log" </dev/null &
PIDS+=($!)
for _ in $(seq 1 100); do
    [ -s "$WORK/bootstrap" ] && break
    sleep 0.1
done
BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$WORK/bootstrap")
[ -n "$BOOTSTRAP" ] || { echo "demo: the dev broker did not start; see $WORK/broker.log" >&2; exit 1; }
echo "demo: embedded cluster at $BOOTSTRAP (orders:8, payments:4)" >&2

"$SLUICE" produce --bootstrap "$BOOTSTRAP" --topic orders --count 100000000 --rate "${ORDERS_RATE:-2000}" --keys 200 \
    2>"$WORK/produce-orders.log" &
PIDS+=($!)
"$SLUICE" produce --bootstrap "$BOOTSTRAP" --topic payments --count 100000000 --rate "${PAYMENTS_RATE:-500}" --keys 50 \
    2>"$WORK/produce-payments.log" &
PIDS+=($!)
echo "demo: producing ${ORDERS_RATE:-2000} orders/s and ${PAYMENTS_RATE:-500} payments/s; Ctrl-C stops" >&2

"$SLUICE" consume --bootstrap "$BOOTSTRAP" --group demo --topic orders --topic payments &
PIDS+=($!)
wait "${PIDS[-1]}"
