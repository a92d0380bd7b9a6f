"""What a data benchmark's run cost: memory of this driver and of its Ray session's processes,
the object store in use, and CPU seconds by process role (``jobs/bench_data.py``)."""

from __future__ import annotations

import os
import threading
import time

from cluster.procs import children_map as _children_map, cpu_seconds as _cpu_seconds
from cluster.procs import descendants as _descendants, host_cpu_seconds as _host_cpu_seconds
from cluster.procs import mem_mb as _mem_mb, process_role as _process_role

FLAT_SLACK_MB = 150.0  # "flat" memory: PSS peak - start below this

GENERIC_ROLES = ("gone", "starting worker", "idle workers", "other ray")


def _more_specific(old: str, new: str) -> str:
    """Workers rename themselves (starting -> ray::IDLE -> ray::ReadFiles...): keep the most telling."""
    return old if new in GENERIC_ROLES and old not in ("gone",) else new


class MemorySampler(threading.Thread):
    """Every ``every`` s: RSS of this driver + this session's raylet and all its descendants, and
    the object store bytes in use (plasma, from the raylet)."""

    def __init__(self, raylet_pid: int | None, gcs_address: str | None, every: float = 2.0,
                 extra_pids: tuple[int, ...] = ()):
        super().__init__(daemon=True)
        self.extra_pids = list(extra_pids)  # e.g. the moto S3 server: its CPU is part of the cost
        self.cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (role, cpu s at mark, latest cpu s)
        self.born_in_window: list[int] = []  # processes started during the measured window
        self.host_at_mark: tuple[float, float] | None = None
        self.host_at_stop: tuple[float, float] | None = None
        self.raylet_pid = raylet_pid
        self.gcs_address = gcs_address
        self._state = None
        self.every = every
        self.samples: list[tuple[float, float, float, float, int]] = []  # (t, rss, pss, store MB, #procs)
        self._halt = threading.Event()
        self.mark: float | None = None  # perf_counter when the measured window starts

    def pids(self, children: dict[int, list[int]] | None = None) -> list[int]:
        """This driver, this session's raylet and all its descendants (the memory we account)."""
        pids = [os.getpid()]
        if self.raylet_pid:
            children = children if children is not None else _children_map()
            pids += _descendants(self.raylet_pid, children)
        return pids

    def cpu_pids(self, children: dict[int, list[int]]) -> list[int]:
        """Memory pids plus the driver's own children (GCS, dashboard ... when Ray started here)
        and the S3 server: everything that competes for the cores."""
        pids = set(self.pids(children)) | set(_descendants(os.getpid(), children))
        for extra in self.extra_pids:
            pids |= set(_descendants(extra, children))
        return sorted(pids)

    def store_mb(self) -> float:
        if not self.gcs_address:
            return -1.0
        try:
            from ray._private import internal_api

            if self._state is None:  # this cluster's GCS, never "any cluster on the host"
                self._state = internal_api.get_state_from_address(self.gcs_address)
            text = internal_api.store_stats_summary(internal_api.get_memory_info_reply(self._state))
        except Exception:  # noqa: BLE001 - best effort; reported as -1
            return -1.0
        for line in text.splitlines():  # "Plasma memory usage 12 MiB, 3 objects, 4.6% full, ..."
            if "Plasma memory usage" in line:
                try:
                    return float(line.split("usage", 1)[1].split("MiB", 1)[0]) * 1.048576
                except ValueError:
                    return -1.0
        return -1.0

    def run(self):
        while not self._halt.is_set():
            children = _children_map()
            pids = self.pids(children)
            mems = [_mem_mb(p) for p in pids]
            marked = self.mark is not None
            if marked and self.host_at_mark is None:
                self.host_at_mark = _host_cpu_seconds()
            for pid in self.cpu_pids(children):
                seconds = _cpu_seconds(pid)
                if pid not in self.cpu:
                    # a process born inside the window counts from 0; one alive at the mark from then
                    self.cpu[pid] = (_process_role(pid), 0.0 if marked else seconds, seconds)
                    if marked:
                        self.born_in_window.append(pid)
                else:
                    role, base, _ = self.cpu[pid]
                    if not marked:
                        base = seconds
                    self.cpu[pid] = (_more_specific(role, _process_role(pid)), base,
                                     seconds if seconds else self.cpu[pid][2])
            self.samples.append((time.perf_counter(), sum(m[0] for m in mems), sum(m[1] for m in mems),
                                 self.store_mb(), len(pids)))
            self._halt.wait(self.every)

    def stop(self):
        self.host_at_stop = _host_cpu_seconds()
        self._halt.set()
        self.join(timeout=10)
        for pid, (role, base, latest) in list(self.cpu.items()):  # a last reading at the window's end
            # workers rename themselves (ray::IDLE -> ray::MapWorker...): take the latest name
            self.cpu[pid] = (_more_specific(role, _process_role(pid)), base, _cpu_seconds(pid) or latest)

    def cpu_breakdown(self) -> dict[str, float]:
        """CPU seconds used per process role during the measured window (sampled every 2 s)."""
        roles: dict[str, float] = {}
        for role, base, latest in self.cpu.values():
            roles[role] = roles.get(role, 0.0) + max(latest - base, 0.0)
        out = {k: round(v, 1) for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v >= 0.05}
        born: dict[str, int] = {}
        for pid in self.born_in_window:
            born[self.cpu[pid][0]] = born.get(self.cpu[pid][0], 0) + 1
        if born:
            out["processes started in the window"] = born
        if self.host_at_mark and self.host_at_stop:
            out["host busy"] = round(self.host_at_stop[0] - self.host_at_mark[0], 1)
            out["host idle"] = round(self.host_at_stop[1] - self.host_at_mark[1], 1)
        return out

    def summary(self) -> dict:
        window = [s for s in self.samples if self.mark is None or s[0] >= self.mark] or self.samples
        if not window:
            return {}
        rss = [s[1] for s in window]
        pss = [s[2] for s in window]
        store = [s[3] for s in window]
        return {"rss_mb_start": round(rss[0]), "rss_mb_peak": round(max(rss)), "rss_mb_end": round(rss[-1]),
                "pss_mb_start": round(pss[0]), "pss_mb_peak": round(max(pss)), "pss_mb_end": round(pss[-1]),
                "store_mb_start": round(store[0]), "store_mb_peak": round(max(store)),
                "processes": window[-1][4], "mem_samples": len(window),
                "pss_mb_peak_incl_warmup": round(max(s[2] for s in self.samples)),
                "flat": bool(max(pss) - pss[0] < FLAT_SLACK_MB)}
