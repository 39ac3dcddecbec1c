#!/bin/bash
# A/B: c06cae5 (old) vs the house (new), interleaved, same conditions.
for round in 1 2; do
  for w in old new; do
    cd /work/bench/$w
    echo "=== round $round $w $(date -u +%H:%M:%S) $(cat /proc/loadavg)"
    timeout 1200 .venv/bin/python bench/daemon.py --only startup,throughput --throughput-files 10000,0 \
      --json /work/bench/out/daemon-$w-$round.json 2>&1 | grep -E "^\| (start|through)|files/s over|ready "
  done
done
echo DONE
