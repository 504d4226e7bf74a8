#!/usr/bin/env python3
"""What the batch that meets the end of a journal segment's zeros pays, by extent size.

The journal writes each segment over zeros written ahead of its records, an extent at a
time (`src/store/segment.rs`, 1 MiB): the batch that finds no zeros left first writes the
next extent, and its fdatasync then flushes that extent and the file's new size too. This
writes 300-byte commits the same way for extents of 16 KiB to 1 MiB and prints, per size,
the p50 / p90 of the commits that grew the file and the p50 of those that did not.

Usage: python3 benches/probes/extent_cost.py [DIR]
DIR must be on the disk the data directory would use (default: the current directory).
"""
import os
import statistics
import sys
import time


def run(directory, extent, commits, record=300):
    path = os.path.join(directory, f"extent-probe-{extent}")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    end = zeroed = 0
    grew, plain = [], []
    zeros = b"\0" * extent
    data = b"\x01" * record
    try:
        for _ in range(commits):
            started = time.perf_counter()
            growing = end + record > zeroed
            if growing:
                to = (end + record + extent - 1) // extent * extent
                os.pwrite(fd, zeros[: to - (end + record)], end + record)
                zeroed = to
            os.pwrite(fd, data, end)
            os.fdatasync(fd)
            end += record
            (grew if growing else plain).append((time.perf_counter() - started) * 1e6)
            time.sleep(0.0002)
    finally:
        os.close(fd)
        os.unlink(path)
    q = lambda xs, p: sorted(xs)[int(len(xs) * p)] if xs else 0
    print(
        f"extent {extent // 1024:5d} KiB: growing commits n={len(grew):4d} "
        f"p50 {statistics.median(grew) if grew else 0:7.0f} us p90 {q(grew, 0.9):7.0f} us; "
        f"others n={len(plain):4d} p50 {statistics.median(plain) if plain else 0:6.0f} us"
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    for extent in (16 << 10, 64 << 10, 256 << 10, 1 << 20):
        run(directory, extent, 2000 if extent <= 64 << 10 else 4000)


if __name__ == "__main__":
    main()
