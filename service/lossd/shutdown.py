"""Graceful shutdown: on SIGTERM (or Ctrl-C) drain, then stop.

uvicorn's own handling closes the listening socket at once, so a load balancer probing
/readyz sees a refused connection rather than a 503, and re-raises the signal after
shutdown, so the process never exits 0. Here the first signal only marks the service
draining: /readyz and new loss calls answer 503 while the socket stays open, the calls
already accepted run to the end (or until ``grace_s`` passes), and then uvicorn shuts
down as usual. A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from lossd.service import Service

log = logging.getLogger("lossd")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, grace_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s
        self.drain_deadline: float | None = None
        self.cut_short = False  # True when calls were still running as the server stopped

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None:
            # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown.
            self.drain_deadline = time.monotonic() + self.grace_s
            self.service.drain()
            log.info("%s: draining %d request(s), grace %.0fs", signal.Signals(sig).name, self.inflight, self.grace_s)
        else:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.cut_short = self.inflight > 0
            self.should_exit = self.force_exit = True

    @property
    def inflight(self) -> int:
        """HTTP requests being received, computed or answered (uvicorn runs one task each)."""
        return len(self.server_state.tasks)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.inflight == 0:
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.error("grace period over with %d request(s) still running; stopping", self.inflight)
                self.cut_short = True
                self.should_exit = True
        return await super().on_tick(counter)
