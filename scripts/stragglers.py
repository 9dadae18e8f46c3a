#!/usr/bin/env python3
"""Writes stragglers.json: 200 independent 2 ms tasks, each updating its own tile in place.

Used for the speculation figures in the README:
  hexec run --gpus none --cpus 2 --policy ws \
      --inject 'slow:cpu1:p=0.02:delay=1s,seed=3' [--speculate] stragglers.json
"""
import json
import sys

tasks, data = [], []
for i in range(200):
    data.append({"name": f"t{i}", "type": "f32", "len": 256})
    tasks.append({"name": f"w{i}", "kernel": "spin", "params": [0.002], "access": [[f"t{i}", "rw"]]})
graph = {"format": "hexec-graph", "version": 1, "name": "stragglers", "data": data, "tasks": tasks}
out = sys.argv[1] if len(sys.argv) > 1 else "stragglers.json"
with open(out, "w") as f:
    json.dump(graph, f)
