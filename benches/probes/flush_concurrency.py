#!/usr/bin/env python3
"""Whether this disk flushes in parallel: 1, 2 and 3 threads, each overwriting its own
zero-filled file and calling fdatasync after every write, as a journal writer does.

Prints, per thread count, the latency of one write + fdatasync (p50, p90, p99) and the
flushes per second of all threads together. If flushes ran in parallel, two threads would
pass twice as many at the same latency; on a disk that serializes them, the latency grows
instead and the total barely moves, and a journal split in two (or a second committer)
cannot shorten a hold's wait.

Usage: python3 benches/probes/flush_concurrency.py [DIR] [COMMITS]
DIR must be on the disk the data directory would use (default: a temporary directory
under the current one); COMMITS per thread (default 3000).
"""
import os
import sys
import tempfile
import threading
import time

SIZE = 16 << 20
RECORD = b"x" * 300


def percentiles(samples):
    s = sorted(samples)

    def at(q):
        return s[min(len(s) - 1, int(len(s) * q))] * 1e6

    return f"p50 {at(0.5):.0f} us  p90 {at(0.9):.0f} us  p99 {at(0.99):.0f} us"


def commits(path, n, out):
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, RECORD, (i * 512) % SIZE)
            os.fdatasync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "."
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    with tempfile.TemporaryDirectory(dir=parent) as d:
        for threads in (1, 2, 3):
            paths = [os.path.join(d, f"flush{i}") for i in range(threads)]
            for p in paths:
                with open(p, "wb") as f:
                    f.write(b"\0" * SIZE)
                    f.flush()
                    os.fsync(f.fileno())
            outs = [[] for _ in paths]
            started = time.perf_counter()
            workers = [
                threading.Thread(target=commits, args=(p, n, o)) for p, o in zip(paths, outs)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - started
            every = [x for o in outs for x in o]
            rate = len(every) / elapsed
            print(f"{threads} thread(s): {percentiles(every)}  {rate:.0f} flushes/s in all")
            for p in paths:
                os.unlink(p)


if __name__ == "__main__":
    main()
