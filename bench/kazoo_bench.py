#!/usr/bin/env python3
"""The kazoo peer: its Counter and Lock recipes and DataWatch on ZooKeeper.

Writes results in the sharedstate-bench JSON format (a list of records) so
`sharedstate-bench report` puts them beside ours. Run by scripts/bench.sh
from a virtualenv under target/:

    python bench/kazoo_bench.py --hosts 127.0.0.1:2181 --out target/bench-results/zk-kazoo.json [--smoke]

Every loop is bounded by a count and a time budget; the server is on loopback.
"""

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
import uuid

from kazoo.client import KazooClient

QUANTILES = [0.0, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9,
             0.95, 0.99, 0.999, 1.0]


def record(scenario, variant, samples_ns, wall_s, errors=0, notes=None, extra=None):
    samples_ns = sorted(max(1, int(s)) for s in samples_ns)
    n = len(samples_ns)
    quantiles = []
    if n:
        for q in QUANTILES:
            # nearest rank, like HdrHistogram's value_at_quantile
            index = min(n - 1, max(0, int(q * n + 0.999999) - 1))
            quantiles.append([q, samples_ns[index]])
    r = {
        "backend": "zk",
        "implementation": "kazoo",
        "scenario": scenario,
        "variant": variant,
        "samples": n,
        "errors": errors,
        "quantiles_ns": quantiles,
        "mean_ns": (sum(samples_ns) / n) if n else 0.0,
        "ops_per_sec": (n / wall_s) if wall_s > 0 else 0.0,
        "notes": notes or [],
        "extra": extra or {},
    }
    p50 = dict((q, v) for q, v in quantiles).get(0.5)
    print(f"  zk     kazoo       {scenario:<20} {variant:<18} n={n:<5} err={errors:<3} "
          f"p50={p50 / 1e6 if p50 else 0:.3f} ms {r['ops_per_sec']:9.0f} ops/s {'; '.join(r['notes'])}",
          file=sys.stderr)
    return r


def connect(hosts):
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=15)
    return client


def counter_value(client, path):
    data, _ = client.get(path)
    return int(data or b"0")


def locked_increment(client, lock, path):
    if not lock.acquire(timeout=10):
        raise TimeoutError("lock not acquired in 10 s")
    try:
        data, stat = client.get(path)
        client.set(path, str(int(data or b"0") + 1).encode(), version=stat.version)
    finally:
        lock.release()


def uncontended(hosts, root, plan):
    client = connect(hosts)
    out = []
    counter = client.Counter(f"{root}/counter", default=0)
    lock_path, data_path = f"{root}/lock", f"{root}/locked-counter"
    client.ensure_path(data_path)
    lock = client.Lock(lock_path, identifier="bench")
    for variant, op in (
        ("Counter", lambda: counter.__add__(1)),
        ("Lock+get+set", lambda: locked_increment(client, lock, data_path)),
    ):
        for _ in range(plan["warmup"]):
            op()
        samples, errors, notes = [], 0, []
        started = time.perf_counter()
        for _ in range(plan["samples"]):
            if time.perf_counter() - started > plan["budget"]:
                notes.append(f"stopped by the {plan['budget']} s budget")
                break
            t0 = time.perf_counter_ns()
            try:
                op()
                samples.append(time.perf_counter_ns() - t0)
            except Exception as error:  # noqa: BLE001 - counted and reported
                errors += 1
                if len(notes) < 3:
                    notes.append(f"error: {error!r}")
        out.append(record("update-uncontended", variant, samples,
                          time.perf_counter() - started, errors, notes))
    client.stop()
    client.close()
    return out


def propagation(hosts, root, plan):
    a, b = connect(hosts), connect(hosts)
    path = f"{root}/watched"
    a.ensure_path(path)
    seen = {"version": -1, "at": 0}
    cond = threading.Condition()

    @b.DataWatch(path)
    def _watch(data, stat):  # called on B's event thread after it re-read the data
        if stat is None:
            return
        with cond:
            seen["version"], seen["at"] = stat.version, time.perf_counter_ns()
            cond.notify_all()

    samples, errors, notes = [], 0, []
    started = time.perf_counter()
    for i in range(plan["warmup"] + plan["samples"]):
        if time.perf_counter() - started > plan["budget"]:
            break
        t0 = time.perf_counter_ns()
        stat = a.set(path, str(i).encode())
        with cond:
            ok = cond.wait_for(lambda: seen["version"] >= stat.version, timeout=10)
            at = seen["at"]
        if not ok:
            errors += 1
            continue
        if i >= plan["warmup"]:
            samples.append(at - t0)
    notes.append("A's set() until B's DataWatch callback (kazoo re-reads the data)")
    out = [record("propagation", "DataWatch", samples, time.perf_counter() - started, errors, notes)]
    for client in (a, b):
        client.stop()
        client.close()
    return out


def worker(hosts, root, mode, run_for, barrier, results):
    client = connect(hosts)
    counter = client.Counter(f"{root}/counter", default=0)
    lock = client.Lock(f"{root}/lock")
    data_path = f"{root}/locked-counter"
    samples, errors, ops, in_window = [], 0, 0, 0
    barrier.wait(timeout=60)
    started = time.perf_counter()
    while time.perf_counter() - started < run_for and ops < 1_000_000:
        ops += 1
        t0 = time.perf_counter_ns()
        try:
            if mode == "Counter":
                counter += 1
            else:
                locked_increment(client, lock, data_path)
            samples.append(time.perf_counter_ns() - t0)
            if time.perf_counter() - started <= run_for:
                in_window += 1
        except Exception:  # noqa: BLE001 - counted
            errors += 1
    results.put((samples, errors, time.perf_counter() - started, in_window))
    client.stop()
    client.close()


def contended(hosts, root, plan):
    out = []
    ctx = mp.get_context("spawn")
    for writers in (4, 8):
        for mode in ("Counter", "Lock"):
            path = f"{root}/contended-{writers}-{mode}"
            setup = connect(hosts)
            setup.ensure_path(f"{path}/locked-counter")
            counter_path = f"{path}/counter" if mode == "Counter" else f"{path}/locked-counter"
            _ = setup.Counter(f"{path}/counter", default=0).value  # creates the node
            before = counter_value(setup, counter_path)
            barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
            procs = [ctx.Process(target=worker, args=(hosts, path, mode, plan["contended_for"], barrier, results))
                     for _ in range(writers)]
            for p in procs:
                p.start()
            barrier.wait(timeout=120)
            started = time.perf_counter()
            samples, errors, reported, busy, in_window = [], 0, 0, 0.0, 0
            deadline = started + plan["contended_for"] + 60
            while reported < writers and time.perf_counter() < deadline:
                try:
                    s, e, elapsed, w = results.get(timeout=max(0.1, deadline - time.perf_counter()))
                except Exception:  # noqa: BLE001 - queue.Empty
                    break
                samples.extend(s)
                errors += e
                busy = max(busy, elapsed)
                in_window += w
                reported += 1
            # Like the Rust runs: from the common start to the last writer's
            # last operation (not the processes' teardown).
            wall = busy or (time.perf_counter() - started)
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
            after = counter_value(setup, counter_path)
            lost = before + len(samples) - after
            notes = [f"final count delta {after - before} vs {len(samples)} successful updates: "
                     + ("exact" if lost == 0 else f"MISMATCH ({lost})"),
                     "one process per writer (kazoo is threaded; the GIL would serialise writers in one process)"]
            if reported < writers:
                notes.append(f"{writers - reported} writers did not report")
            r = record("contended", f"{writers} writers {mode}", samples, wall, errors, notes,
                       {"writers": writers, "successes": len(samples),
                        "final_delta": after - before, "lost_updates": lost,
                        "ops_per_sec_until_last": len(samples) / wall if wall > 0 else 0.0,
                        "window_s": plan["contended_for"]})
            # Throughput: increments completed inside the fixed window (as in
            # the Rust runs), so one starved retry loop does not stretch it.
            r["ops_per_sec"] = in_window / plan["contended_for"]
            out.append(r)
            setup.stop()
            setup.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios (update-uncontended, propagation, contended)")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    if args.smoke:
        plan = {"warmup": 3, "samples": 20, "budget": 5.0, "contended_for": 0.7}
    else:
        plan = {"warmup": 50, "samples": 1000, "budget": 30.0, "contended_for": 8.0}
    root = f"/sharedstate-bench/kazoo-{uuid.uuid4().hex[:12]}"
    records = []
    for name, step in (("update-uncontended", uncontended), ("propagation", propagation),
                       ("contended", contended)):
        if only and name not in only:
            continue
        try:
            records.extend(step(args.hosts, f"{root}/{name}", plan))
        except Exception as error:  # noqa: BLE001 - reported as a failed record
            records.append(record(name, "failed", [], 0, 1, [f"failed: {error!r}"]))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
