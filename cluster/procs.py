"""Process facts read from Linux ``/proc`` (no psutil): state, parent, session, command line,
environment, CPU seconds, memory, and the process tree.

One implementation used by the local cluster (finding and stopping its processes), the
benchmarks (CPU and memory per process role) and the tests. Every reader returns an empty or
zero value for a process that is gone or unreadable instead of raising.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

_GONE = (FileNotFoundError, ProcessLookupError, PermissionError, OSError)


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` this project uses."""

    state: str
    ppid: int
    session: int
    cpu_ticks: int  # utime + stime

    @property
    def alive(self) -> bool:
        """Running or sleeping, not a zombie."""
        return self.state not in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """The stat fields of ``pid``, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
        return ProcStat(fields[0], int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]))
    except _GONE + (ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (non-zombie) process."""
    stat = proc_stat(pid)
    return stat is not None and stat.alive


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` as a list ([] when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except _GONE:
        return []


def has_env(pid: int, name: str, value: str) -> bool:
    """True if the environment of ``pid`` holds ``name=value`` (False when unreadable)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except _GONE:
        return False
    return f"{name}={value}".encode() in environ.split(b"\0")


def all_pids() -> list[int]:
    """Every pid listed in /proc right now."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_table() -> dict[int, ProcStat]:
    """Live (non-zombie) processes by pid."""
    table = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat.alive:
            table[pid] = stat
    return table


def children_map(table: dict[int, ProcStat] | None = None) -> dict[int, list[int]]:
    """Parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for pid, stat in (table if table is not None else process_table()).items():
        children.setdefault(stat.ppid, []).append(pid)
    return children


def descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    """``root`` and every process below it."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def ancestors(pid: int, table: dict[int, ProcStat]) -> set[int]:
    """``pid`` and its parents up to (not including) init."""
    out = set()
    while pid > 1 and pid in table:
        out.add(pid)
        pid = table[pid].ppid
    return out


def find_pids(session: int | None = None, env: tuple[str, str] | None = None) -> list[int]:
    """Live processes in ``session``, or carrying the environment variable ``env`` (name, value),
    or descending from one of those. Never this process, its ancestors or init."""
    table = process_table()
    ours = {p for p, stat in table.items() if session is not None and stat.session == session}
    if env is not None:
        ours |= {p for p in table if p not in ours and has_env(p, *env)}
    children = children_map(table)
    tree: set[int] = set()
    for pid in ours:  # descendants: e.g. job drivers that started their own session
        tree.update(descendants(pid, children))
    return sorted(tree - ancestors(os.getpid(), table) - {1})


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 when it is gone)."""
    stat = proc_stat(pid)
    return stat.cpu_ticks / os.sysconf("SC_CLK_TCK") if stat else 0.0


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole host since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / tick, idle / tick


def mem_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB; PSS splits shared pages (the mmapped object store) between their users."""
    rss = pss = 0.0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ``VmSize`` ...) in MB, None
    when the field or the process is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except _GONE:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel does
    not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def session_raylet_pid(session_dir: str) -> int | None:
    """The raylet whose command line names this Ray session's dir (not other clusters')."""
    for pid in all_pids():
        cmd = cmdline(pid)
        if cmd and "raylet" in cmd[0] and any(session_dir in part for part in cmd):
            return pid
    return None


def process_role(pid: int) -> str:
    """A short role of a Ray-session process for CPU breakdowns: decode actors, read tasks,
    driver, raylet, gcs_server, s3 server ... ("gone" when it exited)."""
    cmd = " ".join(cmdline(pid))
    if not cmd:
        return "gone"
    if pid == os.getpid():
        return "driver"
    if "moto.server" in cmd:
        return "s3 server"
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:]
        if "MapBatches" in name or "SampleProcessor" in name:
            return "decode actors"
        if "Read" in name or "ListFiles" in name:
            return "read tasks"
        return "idle workers" if name.startswith("IDLE") else f"ray::{name.split('.')[0][:30]}"
    program = cmd.split(" ", 1)[0]
    for role in ("raylet", "gcs_server"):
        if program.endswith(role):
            return role
    for role in ("default_worker.py", "dashboard", "runtime_env", "log_monitor", "monitor.py"):
        if role in cmd:
            return "starting worker" if role == "default_worker.py" else role
    return "other ray"


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid, ignoring those that are gone or not ours."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
