#!/usr/bin/env python3
"""What a snapshot's disk work does to the journal's commits, without vpan.

A probe thread stands in for the journal: 3,000-byte overwrites of a zero-filled file,
each followed by fdatasync, every half millisecond. Meanwhile the main thread does one of
the snapshot's two disk jobs, each way alternately, and the probe's commit times during
the job are printed:

  write: 60 MiB written then fsync'd once (burst), or synced every 1 MiB (pieces)
  delete: a 130 MiB covered segment unlinked at once (unlink), or cut 4 MiB at a time
          with a millisecond between cuts (cuts)

Usage: python3 benches/probes/fsync_beside_snapshot.py [DIR] [ROUNDS]
DIR must be on the disk the data directory would use (default: a temporary directory
under the current one).
"""
import os
import sys
import tempfile
import threading
import time

MIB = 1 << 20


def probe(d, stop, lat):
    fd = os.open(os.path.join(d, "journal"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"\0" * MIB)
    os.fsync(fd)
    off, buf = 0, b"x" * 3000
    while not stop.is_set():
        t = time.perf_counter()
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        off = (off + 3000) % (MIB - 3000)
        time.sleep(0.0005)
    os.close(fd)


def write_snapshot(d, piece):
    path = os.path.join(d, "snap")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    chunk, done = os.urandom(256 << 10), 0
    while done < 60 * MIB:
        os.write(fd, chunk)
        done += len(chunk)
        if piece and done % piece == 0:
            os.fdatasync(fd)
    os.fsync(fd)
    os.close(fd)
    os.unlink(path)


def make_segment(d):
    fd = os.open(os.path.join(d, "seg"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    chunk = os.urandom(MIB)
    for _ in range(130):
        os.write(fd, chunk)
    os.fsync(fd)
    os.close(fd)


def delete_segment(d, step):
    path = os.path.join(d, "seg")
    if step:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            while size > 0:
                size = max(0, size - step)
                f.truncate(size)
                time.sleep(0.001)
    os.unlink(path)


def measure(d, name, job, setup=None):
    if setup:
        setup()
        time.sleep(0.5)
    stop, lat = threading.Event(), []
    t = threading.Thread(target=probe, args=(d, stop, lat))
    t.start()
    time.sleep(0.3)
    first = len(lat)
    started = time.perf_counter()
    job()
    took = time.perf_counter() - started
    time.sleep(0.1)
    stop.set()
    t.join()
    during = sorted(lat[first:])
    q = lambda p: during[min(len(during) - 1, int(p * len(during)))] * 1000
    print(f"{name:7} job {took * 1000:5.0f} ms | commits {len(during):4d}  p50 {q(0.5):5.2f}"
          f"  p99 {q(0.99):6.2f}  max {during[-1] * 1000:6.2f} ms")


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(dir=parent) as d:
        for _ in range(rounds):
            measure(d, "burst", lambda: write_snapshot(d, 0))
            measure(d, "pieces", lambda: write_snapshot(d, MIB))
            measure(d, "unlink", lambda: delete_segment(d, 0), lambda: make_segment(d))
            measure(d, "cuts", lambda: delete_segment(d, 4 * MIB), lambda: make_segment(d))


if __name__ == "__main__":
    main()
