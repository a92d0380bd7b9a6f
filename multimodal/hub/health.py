"""The ingress's view of which experts can answer now.

Why it exists: when an expert's only replica dies, Serve's router drops it from its replica set
(on the ``ActorDiedError`` of the next call) and *queues* every later call until the controller's
health check (``health_check_period_s``) has noticed the death and a replacement has started and
loaded its model. A request that arrives in that window would wait for the replacement or for the
expert timeout, whichever comes first, so its answer depended on that race. Here an expert is
``down`` from its first failed call (crash, timeout, error) until a probe (``ping``: the replica
loads its model and answers) succeeds; while it is down, requests skip it at once and name it
under ``failed``. Probes run in the background only for down experts, so a busy expert is never
taken out by a slow probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class ExpertHealth:
    """Up/down per expert, with the reason and the time it went down."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.down: dict[str, tuple[str, float]] = {}

    def is_up(self, name: str) -> bool:
        return name not in self.down

    def mark_down(self, name: str, reason: str) -> None:
        self.down.setdefault(name, (reason, time.time()))

    def mark_up(self, name: str) -> None:
        self.down.pop(name, None)

    def reason(self, name: str) -> str:
        reason, since = self.down[name]
        return f"unavailable for {time.time() - since:.1f}s after: {reason}"

    def snapshot(self) -> dict[str, str]:
        """``{name: "up" | "down: <reason>"}`` for ``GET /healthz``."""
        return {n: "up" if self.is_up(n) else f"down: {self.down[n][0]}" for n in self.names}


async def probe_down_experts(health: ExpertHealth, ping: Callable[[str], Awaitable[object]],
                             interval_s: float, timeout_s: float) -> None:
    """Forever: every ``interval_s``, ping each down expert; an answer within ``timeout_s`` puts
    it back up."""
    async def probe(name: str) -> None:
        try:
            await asyncio.wait_for(ping(name), timeout=timeout_s)
        except Exception:  # still down: dead, starting, or its model does not load
            return
        health.mark_up(name)

    while True:
        await asyncio.sleep(interval_s)
        await asyncio.gather(*(probe(name) for name in list(health.down)))
