#!/bin/bash
for round in 1 2 3; do
  for w in old new; do
    cd /work/bench/$w
    echo "=== round $round $w $(date -u +%H:%M:%S) $(cat /proc/loadavg)"
    timeout 900 .venv/bin/python bench/daemon.py --only throughput --throughput-files 3000,0 2>&1 | grep -E "files/s over"
  done
done
echo DONE
