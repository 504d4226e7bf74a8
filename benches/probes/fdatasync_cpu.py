#!/usr/bin/env python3
"""What one journal commit costs the CPU, not only the clock, without vpan.

Overwrites of a zero-filled file (as the journal writes its segments), each followed by
fdatasync, one after another; prints per commit the wall time, the user and system CPU
time of this process (getrusage) and its voluntary context switches. On a virtual machine
the system time can be a large share of the wall time: the disk's doorbell and the flush
are paid on the vCPU, so each commit the switch saves is CPU the other processes get back.

Usage: python3 benches/probes/fdatasync_cpu.py [DIR] [COMMITS] [BYTES]
DIR must be on the disk the data directory would use (default: a temporary directory
under the current one); BYTES per commit (default 600, about two approvals' records).
"""
import os
import resource
import sys
import tempfile
import time

SIZE = 4 << 20


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "."
    commits = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    with tempfile.TemporaryDirectory(dir=parent) as d:
        fd = os.open(os.path.join(d, "journal"), os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, b"\0" * SIZE, 0)
        os.fsync(fd)
        record = b"x" * size
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(commits):
            os.pwrite(fd, record, (i * size) % (SIZE - size))
            os.fdatasync(fd)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        os.close(fd)
    per = lambda x: x / commits * 1e6
    print(
        f"{commits} commits of {size} bytes: per commit wall {per(wall):.0f} us, "
        f"user {per(after.ru_utime - before.ru_utime):.0f} us, "
        f"system {per(after.ru_stime - before.ru_stime):.0f} us, "
        f"voluntary context switches {(after.ru_nvcsw - before.ru_nvcsw) / commits:.2f}"
    )


if __name__ == "__main__":
    main()
