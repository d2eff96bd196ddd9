"""Processes we started, identified by PID plus start time (and command line where it is stable), so a reused
PID is never mistaken for ours and never signalled."""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name), None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat[stat.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None when gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def session_id(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def command_line(pid: int) -> tuple[str, ...] | None:
    """The process's argv (/proc/PID/cmdline), None when gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1])


@dataclass(frozen=True)
class ProcessRecord:
    """A process as recorded when it registered. `cmdline` is checked only when recorded: Ray workers rename
    themselves (ray::IDLE, ray::RayTrainWorker...), the controller does not. The start time, in the kernel's
    clock ticks since boot, is exact and does not move when the wall clock is set."""

    pid: int
    ticks: int
    cmdline: tuple[str, ...] | None = None

    @classmethod
    def current(cls, with_cmdline: bool = False) -> "ProcessRecord":
        pid = os.getpid()
        return cls(pid, start_ticks(pid) or 0, command_line(pid) if with_cmdline else None)

    @classmethod
    def from_dict(cls, data: dict) -> "ProcessRecord":
        cmdline = data.get("cmdline")
        return cls(int(data["pid"]), int(data["ticks"]), tuple(cmdline) if cmdline is not None else None)

    def to_dict(self) -> dict:
        data: dict = {"pid": self.pid, "ticks": self.ticks}
        if self.cmdline is not None:
            data["cmdline"] = list(self.cmdline)
        return data

    @classmethod
    def parse(cls, text: str) -> "ProcessRecord":
        return cls.from_dict(json.loads(text))

    def dump(self) -> str:
        return json.dumps(self.to_dict())

    def pid_in_use(self) -> bool:
        """Some process (ours or not) holds the PID."""
        return start_ticks(self.pid) is not None

    def alive(self) -> bool:
        """The recorded process itself is running: same PID, same start time, same command line if recorded."""
        if start_ticks(self.pid) != self.ticks:
            return False
        return self.cmdline is None or command_line(self.pid) == self.cmdline

    def kill(self) -> bool:
        """SIGKILL the process if it is verifiably the one recorded; True when a signal was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


def session_members(leader: ProcessRecord) -> list[ProcessRecord]:
    """Processes left in the session that `leader` created (sid == its PID), started no earlier than it.

    Empty when another process now holds the leader's PID: Linux does not reuse a PID while any process still
    has it as its session id, so a reused PID means every member of the recorded session is gone, and the
    processes now in a session of that id belong to someone else.
    """
    if leader.pid_in_use() and not leader.alive():
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        ticks = start_ticks(pid)
        if ticks is not None and ticks >= leader.ticks and session_id(pid) == leader.pid:
            members.append(ProcessRecord(pid, ticks))
    return members


def processes_with_environment(name: str, value: str) -> list[ProcessRecord]:
    """This user's processes (other than this one) whose environment has `name` set to `value` or below it (a path
    prefix): the processes that inherited it, whatever session they are in (Ray starts its daemons in new ones)."""
    exact, below = f"{name}={value}".encode(), f"{name}={value.rstrip('/')}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if exact in variables or any(variable.startswith(below) for variable in variables):
            pid = int(entry.name)
            ticks = start_ticks(pid)
            if ticks is not None:
                found.append(ProcessRecord(pid, ticks))
    return found
