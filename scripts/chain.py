#!/usr/bin/env python3
"""Writes a chain of N empty (`noop`) tasks, each after the one before: the shape of the
per-task overhead figures and of the deadline-prediction cost in the README.

  python3 scripts/chain.py 100000 chain.json
"""
import json
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
out = sys.argv[2] if len(sys.argv) > 2 else "chain.json"
tasks = [{"name": "t0", "kernel": "noop"}]
tasks += [{"name": f"t{i}", "kernel": "noop", "after": [f"t{i - 1}"]} for i in range(1, n)]
with open(out, "w") as f:
    json.dump({"format": "hexec-graph", "version": 1, "tasks": tasks}, f)
