"""Processes the bench starts (each in its own session, stopped by its own process group id, never by name), and
CPU accounting read from /proc: per core, per process group, and for PostgreSQL and Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def taskset(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


class Proc:
    """A started process (and its children, in its own process group), with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
                 cpus: str | None = None, log: Path):
        self.name, self.log = name, log
        self.cmd = taskset(cpus, cmd)
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(self.cmd, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pgid = self.popen.pid  # a new session: the group id is the leader's pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 8.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        # workers of our group that outlived the leader
        for pid in group_pids(self.pgid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._fh.close()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http(url: str, proc: Proc, timeout: float = 60.0, expect=(200,)) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in expect:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s ({last}):\n{proc.tail()}")


# /proc ------------------------------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    head, _, rest = raw.rpartition(")")
    comm = head.partition("(")[2]
    return [str(pid), comm, *rest.split()]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_pids(pgid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and int(fields[4]) == pgid:
            out.append(pid)
    return out


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[13]) + int(fields[14])) / TICK


@dataclass
class CpuSnapshot:
    at: float
    cores: dict[str, tuple[float, float]]  # cpuN -> (busy seconds, total seconds)
    groups: dict[int, dict[int, float]]  # pgid -> {pid: CPU seconds} of its live processes
    services: dict[int, float]  # PostgreSQL + Redis processes: {pid: CPU seconds}

    @classmethod
    def take(cls, pgids: list[int]) -> CpuSnapshot:
        cores = {}
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *values = line.split()
                    v = [int(x) for x in values]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    total = sum(v[:8])
                    cores[name] = ((total - idle) / TICK, total / TICK)
        groups: dict[int, dict[int, float]] = {pgid: {} for pgid in pgids}
        services: dict[int, float] = {}
        for pid in _all_pids():
            fields = _stat_fields(pid)
            if not fields:
                continue
            pgrp = int(fields[4])
            if pgrp in groups:
                groups[pgrp][pid] = _cpu_seconds(fields)
            if fields[1].startswith(("postgres", "redis-server")):
                services[pid] = _cpu_seconds(fields)
        return cls(time.monotonic(), cores, groups, services)


def grown(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second (new ones: all of theirs)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, server_pgid: int | None, requests: int,
              load_cpu_seconds: float, server_core: str | None) -> dict:
    """What the CPU did during a measured run: the server's CPU per request, PostgreSQL + Redis, the load
    generator, and the rest (other work on this machine: noise), overall and on the server's core."""
    wall = after.at - before.at
    busy = sum(after.cores[c][0] - before.cores[c][0] for c in after.cores)
    server = grown(before.groups.get(server_pgid, {}), after.groups.get(server_pgid, {})) if server_pgid else 0.0
    services = grown(before.services, after.services)
    out = {
        "wall_s": round(wall, 2),
        "server_cpu_s": round(server, 2),
        "server_cpu_us_per_request": round(server / requests * 1e6, 1) if requests else None,
        "services_cpu_s": round(services, 2),
        "load_generator_cpu_s": round(load_cpu_seconds, 2),
        "other_cpu_pct": round(max(0.0, busy - server - services - load_cpu_seconds) / wall * 100, 1),
        "machine_busy_pct": round(busy / wall * 100, 1),
    }
    if server_core and server_core in after.cores:
        core_busy = after.cores[server_core][0] - before.cores[server_core][0]
        out["server_core_busy_pct"] = round(core_busy / wall * 100, 1)
        out["server_core_not_server_pct"] = round(max(0.0, core_busy - server) / wall * 100, 1)
    return out
