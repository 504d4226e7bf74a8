#!/usr/bin/env python3
"""The switch's CPU samples, by kind of work: kernel TCP, the journal's syscalls, the flow,
the issuer link, the cards... (benches/RESULTS.md, "Where an approval's CPU goes, by kind").

    perf record -e cpu-clock -F 4999 --call-graph dwarf,32768 -p <switch pid> -o sw.data -- sleep 4
    perf script -i sw.data -F ip,sym | benches/cpu_by_kind.py [CPU_US_PER_REQUEST]

Each sample goes to the first kind its stack matches, in the order below (a sample in the
cards' decision under the flow counts as the cards'). With the switch's CPU per request
(e.g. from /proc/<pid>/stat over the same run) it also prints each kind per request.
"""
import collections
import sys

# (kind, is it in the kernel, any of these substrings in the stack)
KINDS = [
    ("kernel: the journal's pwrite and fdatasync", True, ("fdatasync", "Segment::commit")),
    ("kernel: TCP sends", True, ("writev",)),
    ("kernel: TCP receives", True, ("recv",)),
    ("kernel: page faults", True, ("page_fault",)),
    ("kernel: interrupts", True, ("asm_common_interrupt", "asm_sysvec")),
    ("kernel: other (epoll, futex, scheduling)", True, ("",)),
    ("the journal's writer thread", False, ("store::journal", "store::segment")),
    ("the cards: decision and hold", False, ("Cards::authorize",)),
    ("the cards: the issuer's answer recorded", False, ("Cards::complete",)),
    ("the ledger's retention queue", False, ("Ledger::remember",)),
    ("the issuer link: reading and matching answers, writing", False,
     ("IssuerLink::on_answer", "issuer::connection")),
    ("the issuer link: stamping and queueing requests", False,
     ("IssuerLink::dispatch", "IssuerLink::send")),
    ("the flow: parse, fields, layouts", False, ("Flow::", "flow::")),
    ("the network connection task", False, ("connection::serve",)),
    ("tokio's scheduler", False, ("tokio",)),
    ("other", False, ("",)),
]


def stacks(lines):
    """Each sample's frames, leaf first (perf script prints one frame a line, then a blank)."""
    frames = []
    for line in lines:
        line = line.strip()
        if not line:
            if frames:
                yield frames
            frames = []
            continue
        parts = line.split(" ", 1)
        frames.append(parts[1] if len(parts) > 1 else "?")
    if frames:
        yield frames


def kind_of(frames):
    in_kernel = any("entry_SYSCALL" in f or f.startswith("asm_") for f in frames)
    text = "\n".join(frames)
    for name, kernel, marks in KINDS:
        if kernel == in_kernel and any(m in text for m in marks):
            return name
    return "other"


def main():
    per_request = float(sys.argv[1]) if len(sys.argv) > 1 else None
    counts = collections.Counter(kind_of(s) for s in stacks(sys.stdin))
    total = sum(counts.values())
    if not total:
        sys.exit("no samples on standard input")
    print(f"{total} samples")
    for name, n in counts.most_common():
        share = n / total
        extra = f"  {share * per_request:5.2f} us/request" if per_request else ""
        print(f"{100 * share:5.1f} %  {name}{extra}")


if __name__ == "__main__":
    main()
