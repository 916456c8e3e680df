"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx


def results_path() -> Path:
    """Where the figures go: ``BENCH_RESULTS``, else bench/results.json."""
    return Path(os.environ.get("BENCH_RESULTS") or Path(__file__).parent / "results.json")


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_name: str = "",
    target: str = "",
) -> dict[str, Any]:
    """One row of the results: a figure, the baseline measured beside it in the same run, the goal."""
    return {
        "figure": name,
        "value": round(value, 4),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 4),
        "baseline_name": baseline_name,
        "target": target,
    }


def record(bench: str, rows: list[dict[str, Any]], note: str = "") -> Path:
    """Put this benchmark's figures into the results file (the other benchmarks' stay), with when and
    on how many cores they were measured."""
    path = results_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data[bench] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": note,
        "figures": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def rss_kib(pid: int) -> tuple[int, int]:
    """(resident set, its peak) of a process in KiB, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, in seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different free ports (each held until all are chosen, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, timeout: float = 30, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def start_cluster(root: Path, size: int = 3) -> tuple[list[subprocess.Popen[bytes]], str]:
    """A JetStream cluster of ``size`` nats-servers on this machine (one loopback address each, free
    ports); returns the processes and the comma-separated client URL. Waits until JetStream is healthy."""
    from imrelay.natsserver import nats_server_binary

    hosts = [f"127.0.0.{31 + i}" for i in range(size)]
    client, route, monitor = free_port(), free_port(), free_port()
    routes = "\n".join(f"    nats://{h}:{route}" for h in hosts)
    procs = []
    for i, host in enumerate(hosts):
        node = root / f"node{i}"
        node.mkdir(parents=True)
        (node / "nats.conf").write_text(
            f"server_name: bench-{i}\nlisten: {host}:{client}\nhttp: {host}:{monitor}\n"
            f"jetstream {{\n  store_dir: {node / 'data'}\n}}\n"
            f"cluster {{\n  name: bench\n  listen: {host}:{route}\n  routes: [\n{routes}\n  ]\n}}\n"
        )
        with open(node / "nats.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [nats_server_binary(), "-c", str(node / "nats.conf")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for host in hosts:
        wait_http(f"http://{host}:{monitor}/healthz", timeout=60)
    return procs, ",".join(f"nats://{h}:{client}" for h in hosts)


BENCH_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # a WeCom EncodingAESKey (43 characters)


def wecom_app_bot(bot_id: str, corp_id: str, sim: str) -> dict[str, Any]:
    """A WeCom app bot of the benchmarks' configs, its API played by the simulator at ``sim``."""
    return {
        "id": bot_id,
        "platform": "wecom_app",
        "api_base": sim,
        "credentials": {
            "corp_id": corp_id,
            "agent_id": "1000002",
            "secret": "s",
            "token": "benchtoken",
            "encoding_aes_key": BENCH_KEY,
        },
    }


def service_env(tmp: Path, config: dict[str, Any], nats_url: str, **extra: str) -> dict[str, str]:
    """Write ``config`` to ``tmp/imrelay.yaml``; the environment of services reading it (quiet logs)."""
    import yaml

    (tmp / "imrelay.yaml").write_text(yaml.safe_dump(config))
    return dict(
        os.environ,
        IMRELAY_CONFIG=str(tmp / "imrelay.yaml"),
        IMRELAY_NATS_URL=nats_url,
        IMRELAY_LOG_LEVEL="WARNING",
        **extra,
    )


def start_service(
    module: str, env: dict[str, str], log: IO[bytes], ready_url: str, *args: str
) -> subprocess.Popen[bytes]:
    """``python -m module args`` with ``env``, its output in ``log``; returns once ``ready_url`` answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    wait_http(ready_url, timeout=60)
    return proc


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the benchmark's processes, the last started first."""
    for p in reversed(procs):
        p.terminate()
        p.wait(10)
