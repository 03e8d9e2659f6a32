#!/usr/bin/env bash
# Wait in one device call for a session started with setsid (recipe_session.sh, acdc_session.sh) for at most $1
# seconds, until /opt/acc/DONE; every 30 s copy what it has produced into $OUT (collect.sh, written to a temporary
# folder and moved), so that a call cut short by the device budget still brings the finished folds back.
set -u
LIMIT=${1:-560}
end=$((SECONDS + LIMIT))
snap() {
    mkdir -p /opt/snap && OUT=/opt/snap bash benchmarks/device/collect.sh > /opt/snap.log 2>&1
    for f in /opt/snap/*; do cp "$f" "$OUT/.$(basename "$f")" && mv "$OUT/.$(basename "$f")" "$OUT/$(basename "$f")"; done
}
while [ ! -e /opt/acc/DONE ] && [ $SECONDS -lt $end ]; do
    sleep 30
    snap
done
snap
head -n 20 /opt/snap.log | cut -c1-300
tail -n 4 /opt/out/utilization.txt 2>/dev/null
cat /opt/session.log 2>/dev/null
