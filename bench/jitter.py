#!/usr/bin/env python3
"""The host's own CPU jitter: how much longer the slow work items take than the median
ones when nothing but fixed work runs, one process per core.

    python3 bench/jitter.py [--items 300] [--item-ms 20]

The load benchmark's p99 latencies include this. On the 2-core sandbox (a virtual
machine on a shared host), identical work items of about 20 ms took 1.21-1.34x the
median at p99 (three runs). A server that queues requests fairly cannot have a p99
much closer to its median than this. Needs only the standard library.
"""

import argparse
import multiprocessing
import os
import time


def work(units):
    total = 0
    for i in range(units):
        total += i * i
    return total


def run_items(args):
    units, items = args
    durations = []
    for _ in range(items):
        started = time.perf_counter()
        work(units)
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300, help="work items per process")
    parser.add_argument("--item-ms", type=float, default=20.0, help="about how long each takes")
    args = parser.parse_args()
    started = time.perf_counter()
    work(200_000)
    units = int(200_000 * args.item_ms / 1000 / (time.perf_counter() - started))
    processes = os.cpu_count() or 1
    with multiprocessing.Pool(processes) as pool:
        runs = pool.map(run_items, [(units, args.items)] * processes)
    durations = sorted(d for run in runs for d in run)
    at = lambda q: durations[min(len(durations) - 1, int(q * len(durations)))]
    p50, p90, p99 = at(0.5), at(0.9), at(0.99)
    print(f"{len(durations)} work items on {processes} processes: p50 {p50:.1f} ms, "
          f"p90 {p90:.1f} ms ({p90 / p50:.2f}x), p99 {p99:.1f} ms ({p99 / p50:.2f}x), "
          f"max {durations[-1]:.1f} ms ({durations[-1] / p50:.2f}x)")


if __name__ == "__main__":
    main()
