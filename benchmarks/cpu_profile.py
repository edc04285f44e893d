"""Where the CPU goes while dlpipe trains: CPU time of every thread of this process tree, from /proc.

``snapshot()`` reads the user+system CPU seconds of each thread of this process and all its
descendants (the Spark JVM, its Python workers that run the barrier tasks, and the rank processes
they start); ``breakdown(a, b, seconds)`` turns two snapshots into cores used per part of the job.
Linux only (elsewhere a snapshot is empty and the breakdown says so). Nothing is sampled in between,
so it costs two directory walks.
"""
from __future__ import annotations

import os
from pathlib import Path

Snapshot = dict[tuple[int, int], tuple[str, float]]  # (pid, tid) -> (part of the job, CPU seconds)

PARTS = ("rank main threads", "rank other threads", "Spark JVM", "Spark Python workers", "driver", "other")


def _children(proc: Path) -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in ``proc``."""
    tree: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _part(pid: int, tid: int, cmdline: str, root: int) -> str:
    if pid == root:
        return "driver"
    if "pipelines.launcher" in cmdline:
        return "rank main threads" if tid == pid else "rank other threads"
    if "java" in cmdline.split(" ", 1)[0]:
        return "Spark JVM"
    if "pyspark" in cmdline or "python" in cmdline:
        return "Spark Python workers"
    return "other"


def snapshot(root: int | None = None, proc: Path = Path("/proc")) -> Snapshot:
    """CPU seconds of every thread of ``root`` (default: this process) and its descendants."""
    if not proc.is_dir():
        return {}
    root = os.getpid() if root is None else root
    tree, tick = _children(proc), os.sysconf("SC_CLK_TCK")
    out: Snapshot = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(tree.get(pid, []))
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            tids = [int(t.name) for t in (proc / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                stat = (proc / str(pid) / "task" / str(tid) / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            out[(pid, tid)] = (_part(pid, tid, cmdline, root), (int(fields[11]) + int(fields[12])) / tick)
    return out


def breakdown(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, float]:
    """Cores each part of the job used between two snapshots ``seconds`` apart (threads that started
    in between count from 0, in the part they had at the second), plus ``total``."""
    used = {part: 0.0 for part in PARTS}
    for key, (part, cpu) in after.items():
        # A thread keeps the part it had at the first snapshot: a rank that is already exiting at
        # the second has an empty command line.
        first_part, first_cpu = before.get(key, (part, 0.0))
        used[first_part] += max(0.0, cpu - first_cpu)
    cores = {part: round(v / seconds, 3) for part, v in used.items() if seconds > 0}
    cores["total"] = round(sum(used.values()) / seconds, 3) if seconds > 0 else 0.0
    return cores
