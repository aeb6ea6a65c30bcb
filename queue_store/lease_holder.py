"""Who holds a lease: host, process id, process start time and run id.

A lease records its holder so a rerun can take back at once the claims of a run that is
provably dead (same host, and its process is gone or the pid now belongs to a newer process)
instead of waiting ``lease_seconds`` for them to expire. Holders on other hosts, and live
ones, are left to the lease expiry: nothing here can prove them dead.
"""
from __future__ import annotations

import os
import socket

import psutil
from pydantic import BaseModel, ValidationError

# Process start times read twice agree to the clock tick; a reused pid starts much later.
_START_TOLERANCE_S = 0.5


class LeaseHolder(BaseModel):
    host: str
    pid: int
    started: float
    run_id: str = ""

    @classmethod
    def this_process(cls, run_id: str = "") -> "LeaseHolder":
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   started=psutil.Process().create_time(), run_id=run_id)

    @classmethod
    def parse(cls, owner: str | None) -> "LeaseHolder | None":
        """The holder recorded in a lease; None for free-form owners (nothing provable)."""
        if not owner or not owner.startswith("{"):
            return None
        try:
            return cls.model_validate_json(owner)
        except ValidationError:
            return None

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def describe(cls, owner: str | None) -> str:
        """A lease's holder in words, e.g. ``run g-2026… (pid 4242 on node-1)``."""
        holder = cls.parse(owner)
        if holder is None:
            return repr(owner or "unnamed")
        run = f"run {holder.run_id} " if holder.run_id else ""
        return f"{run}(pid {holder.pid} on {holder.host})"

    def provably_dead(self) -> bool:
        """True only when this host can see that the holding process no longer runs."""
        if self.host != socket.gethostname():
            return False
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            return abs(proc.create_time() - self.started) > _START_TOLERANCE_S
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False  # e.g. access denied: it exists, so it may be alive
