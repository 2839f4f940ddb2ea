"""Driving load: wrk with bench/wrk_case.lua for single requests, bench/login_driver.py for whole logins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .procs import CpuSnapshot, cpu_delta, taskset

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_case.lua"


@dataclass
class Request:
    """What one case sends: a fixed request, or one built from each line of a feed file."""
    path: str
    method: str = "GET"
    headers: dict = field(default_factory=dict)
    body: str | None = None
    feed: Path | None = None
    cycle: bool = False
    expect: str | None = None  # a Lua pattern every 2xx body must match


@dataclass
class Load:
    connections: int = 32
    threads: int = 1
    cpus: str | None = "1"  # where the load generator runs
    timeout_s: int = 10


def run_wrk(base_url: str, request: Request, duration: float, load: Load, *, server_pgid: int | None = None,
            server_core: str | None = None) -> dict:
    env = {**os.environ,
           "BENCH_METHOD": request.method,
           "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in request.headers.items()),
           "BENCH_BODY": request.body or "",
           "BENCH_FEED": str(request.feed) if request.feed else "",
           "BENCH_FEED_CYCLE": "1" if request.cycle else "0",
           "BENCH_EXPECT": request.expect or "",
           "BENCH_THREADS": str(load.threads),
           "BENCH_CONNECTIONS": str(load.connections)}
    seconds = max(1, int(round(duration)))
    cmd = taskset(load.cpus, ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{seconds}s",
                              "--timeout", f"{load.timeout_s}s", "-s", str(LUA), base_url + request.path])
    pgids = [server_pgid] if server_pgid else []
    before_children = os.times()
    before = CpuSnapshot.take(pgids)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    after = CpuSnapshot.take(pgids)
    after_children = os.times()
    wrk_cpu = (after_children.children_user - before_children.children_user
               + after_children.children_system - before_children.children_system)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {proc.stderr.strip()[-500:]} "
                           f"{proc.stdout.strip()[-500:]}")
    result = json.loads(line[len("BENCH_RESULT "):])
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    result["cpu"] = cpu_delta(before, after, server_pgid, result["requests"], wrk_cpu, server_core)
    result["load"] = {"tool": "wrk", "connections": load.connections, "threads": load.threads,
                      "cpus": load.cpus or "any", "duration_s": seconds}
    return result


def run_logins(base_url: str, *, mode: str, duration: float, concurrency: int, lines_file: Path, client_id: str,
               redirect_uri: str, password: str, cpus: str | None, server_pgid: int | None = None,
               server_core: str | None = None) -> dict:
    cmd = taskset(cpus, [sys.executable, str(HERE / "login_driver.py"), "--base", base_url, "--mode", mode,
                         "--duration", str(duration), "--concurrency", str(concurrency), "--lines",
                         str(lines_file), "--client-id", client_id, "--redirect-uri", redirect_uri,
                         "--password", password])
    pgids = [server_pgid] if server_pgid else []
    before_children = os.times()
    before = CpuSnapshot.take(pgids)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 180)
    after = CpuSnapshot.take(pgids)
    after_children = os.times()
    driver_cpu = (after_children.children_user - before_children.children_user
                  + after_children.children_system - before_children.children_system)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"login driver gave no result (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    result = json.loads(line[len("BENCH_RESULT "):])
    result["cpu"] = cpu_delta(before, after, server_pgid, result["requests"], driver_cpu, server_core)
    result["cpu"]["server_cpu_us_per_login"] = (round(result["cpu"]["server_cpu_s"] / result["logins"] * 1e6, 1)
                                               if result["logins"] else None)
    result["load"] = {"tool": "bench/login_driver.py", "connections": concurrency, "cpus": cpus or "any",
                      "duration_s": duration}
    return result
