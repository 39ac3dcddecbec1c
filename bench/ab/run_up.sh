#!/bin/bash
for w in old new old new; do
  cd /work/bench/$w
  echo "=== $w $(date -u +%H:%M:%S) $(cat /proc/loadavg)"
  timeout 1500 .venv/bin/python bench/upload.py --sizes 1 --repeat 1 --keep 2>&1 | grep -E "^\|" 
done
echo DONE
