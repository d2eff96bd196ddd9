"""Processes we started, identified by PID plus start time so a reused PID is never mistaken for ours."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def session_id(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[3])


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    ticks: int

    @classmethod
    def current(cls) -> "ProcessRecord":
        return cls(os.getpid(), start_ticks(os.getpid()) or 0)

    @classmethod
    def parse(cls, text: str) -> "ProcessRecord":
        pid, ticks = text.split()
        return cls(int(pid), int(ticks))

    def dump(self) -> str:
        return f"{self.pid} {self.ticks}\n"

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.ticks

    def kill(self) -> bool:
        """SIGKILL the process if it is still the one recorded; True when a signal was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def session_members(leader: ProcessRecord) -> list[ProcessRecord]:
    """Processes in the session that `leader` created (sid == its PID), started no earlier than it."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        ticks = start_ticks(pid)
        if ticks is not None and ticks >= leader.ticks and session_id(pid) == leader.pid:
            members.append(ProcessRecord(pid, ticks))
    return members
