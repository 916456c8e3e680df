"""Ingress throughput and ack latency: verified WeCom callbacks (signature + AES decrypt + XML parse +
JetStream publish with PubAck) per second and p50/p99 latency at concurrency 16 and 64 (BENCH_CONCURRENCY,
comma-separated) for 10 s each (BENCH_SECONDS), beside a bare Starlette endpoint served the same way
(uvicorn, one process, same bodies) measured in the same run, and their ratio; for one ingress process and
for ``ingress.workers`` processes (BENCH_WORKERS, default the number of cores). Also beside the least a
verified endpoint must do, hand-written and served the same way (``minimal_ingress.py``: signature,
timestamp, AES, XML, JetStream publish with PubAck): the work itself, without imrelay around it.
Then the same ingress (one process) on a 3-node JetStream cluster with imrelay's streams replicated 3 times
(the Helm chart's default), beside the single node: what replication costs (all nodes share this machine's
cores, so the cost is overstated against nodes of their own).

Prints figures; never passes or fails on time. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import nats
import yaml
from _common import figure, free_port, free_ports, record, start_cluster, stop_all, wait_http

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay_sim.client import build_callback

HERE = Path(__file__).parent
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "16,64").split(",") if c.strip()]
WORKERS = int(os.environ.get("BENCH_WORKERS", str(max(2, os.cpu_count() or 1))))
DURATION = int(os.environ.get("BENCH_SECONDS", "10"))
THREADS = 2
PER_RUN = 60_000  # callbacks prepared per ingress run (wrk starts over when a run answers more)
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def make_requests(path: Path, config: dict[str, Any], n: int, first: int = 0) -> None:
    """``n`` signed callbacks with message ids from ``first`` on (each ingress run gets its own, so none
    is a duplicate of an earlier run's)."""
    bot = parse_settings(config, {}).bots[0]
    now = int(time.time())
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            query, body = build_callback(
                bot, f"benchmark question {i}", f"user{i % 500}", str(10**12 + first + i), now
            )
            out.write(f"/callback/{bot.id}?{query}\t{body.decode()}\n")


def serve_baseline(app: str, port: int, log: IO[bytes], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A baseline app of this folder (``module:app``) served by uvicorn, one process, as the ingress is."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(HERE),
            app,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_wrk(base: str, requests: Path, concurrency: int) -> dict[str, float]:
    env = dict(os.environ, BENCH_REQUESTS=str(requests), BENCH_THREADS=str(THREADS))
    out = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{concurrency}",
            f"-d{DURATION}s",
            "--latency",
            "-s",
            str(HERE / "callbacks.lua"),
            base,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def seconds(value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", value)
        assert m, value
        return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]

    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": seconds(lat["50"]),
        "p99": seconds(lat["99"]),
        "requests": float(total.group(1)) if total else 0.0,
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


async def stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("IMRELAY_IN")).state.messages)
    finally:
        await nc.close()


def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("make bench needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="imrelay-bench-"))
    server = EmbeddedNats(store_dir=tmp / "nats").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        config: dict[str, Any] = {
            "bots": [
                {
                    "id": "bench",
                    "platform": "wecom_app",
                    "credentials": {
                        "corp_id": "wwbench0000000001",
                        "agent_id": "1000002",
                        "secret": "s",
                        "token": "benchtoken",
                        "encoding_aes_key": KEY,
                    },
                }
            ]
        }
        (tmp / "imrelay.yaml").write_text(yaml.safe_dump(config))
        runs = [(c, v) for c in CONCURRENCIES for v in ("one", "multi", "minimal")] + [
            (max(CONCURRENCIES), "r3")
        ]
        files = {run: tmp / f"requests-{run[1]}-{run[0]}.tsv" for run in runs}
        levels = ", ".join(map(str, CONCURRENCIES))
        print(f"preparing signed callbacks (concurrency {levels}, {DURATION}s per run)...", flush=True)
        for n, run in enumerate(runs):
            make_requests(files[run], config, PER_RUN, n * PER_RUN)
        (tmp / "imrelay-workers.yaml").write_text(yaml.safe_dump(dict(config, ingress={"workers": WORKERS})))

        ingress_port, admin_port, bare_port, minimal_port, multi_port, multi_admin = free_ports(6)
        env = dict(
            os.environ,
            IMRELAY_CONFIG=str(tmp / "imrelay.yaml"),
            IMRELAY_NATS_URL=server.url,
            IMRELAY_PORT=str(ingress_port),
            IMRELAY_ADMIN_PORT=str(admin_port),
            IMRELAY_LOG_LEVEL="WARNING",
        )
        log = open(tmp / "servers.log", "wb")
        for e in (
            env,
            dict(
                env,
                IMRELAY_CONFIG=str(tmp / "imrelay-workers.yaml"),
                IMRELAY_PORT=str(multi_port),
                IMRELAY_ADMIN_PORT=str(multi_admin),
            ),
        ):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "imrelay_ingress"], env=e, stdout=log, stderr=subprocess.STDOUT
                )
            )
        procs.append(serve_baseline("bare_app:app", bare_port, log, os.environ))
        credentials = config["bots"][0]["credentials"]
        minimal_env = dict(
            os.environ,
            BENCH_NATS_URL=server.url,
            BENCH_TOKEN=credentials["token"],
            BENCH_AES_KEY=credentials["encoding_aes_key"],
            BENCH_CORP_ID=credentials["corp_id"],
        )
        procs.append(serve_baseline("minimal_ingress:app", minimal_port, log, minimal_env))
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        wait_http(f"http://127.0.0.1:{minimal_port}/callback/x", ok=(405,))
        wait_http(f"http://127.0.0.1:{multi_admin}/readyz")
        wait_http(f"http://127.0.0.1:{bare_port}/callback/x")

        rows: dict[int, dict[str, dict[str, float]]] = {}
        before = asyncio.run(stored(server.url))
        answered = 0.0
        for c in CONCURRENCIES:
            rows[c] = {
                "bare": run_wrk(f"http://127.0.0.1:{bare_port}", files[(c, "one")], c),
                "minimal": run_wrk(f"http://127.0.0.1:{minimal_port}", files[(c, "minimal")], c),
                "one": run_wrk(f"http://127.0.0.1:{ingress_port}", files[(c, "one")], c),
                "multi": run_wrk(f"http://127.0.0.1:{multi_port}", files[(c, "multi")], c),
            }
            answered += rows[c]["one"]["requests"] + rows[c]["multi"]["requests"]
        after = asyncio.run(stored(server.url))
        stop_all(procs)
        procs.clear()
        server.cleanup()

        # the same ingress on a 3-node cluster, streams replicated 3 times
        cluster_procs, cluster_url = start_cluster(tmp / "cluster")
        procs += cluster_procs
        (tmp / "imrelay-r3.yaml").write_text(yaml.safe_dump(dict(config, nats={"replicas": 3})))
        r3_port, r3_admin = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "imrelay_ingress"],
                env=dict(
                    env,
                    IMRELAY_CONFIG=str(tmp / "imrelay-r3.yaml"),
                    IMRELAY_NATS_URL=cluster_url,
                    IMRELAY_PORT=str(r3_port),
                    IMRELAY_ADMIN_PORT=str(r3_admin),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_http(f"http://127.0.0.1:{r3_admin}/readyz", timeout=60)
        top = max(CONCURRENCIES)
        r3 = run_wrk(f"http://127.0.0.1:{r3_port}", files[(top, "r3")], top)

        print()
        print(f"{'':46}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
        table = [
            (f"c{c} {name}", r)
            for c in CONCURRENCIES
            for name, r in (
                ("bare Starlette endpoint (200)", rows[c]["bare"]),
                ("minimal verified endpoint (hand-written)", rows[c]["minimal"]),
                ("imrelay ingress (verify+decrypt+PubAck)", rows[c]["one"]),
                (f"imrelay ingress, ingress.workers={WORKERS}", rows[c]["multi"]),
            )
        ]
        table.append((f"c{top} imrelay ingress, 3-node cluster, R3", r3))
        for name, r in table:
            print(
                f"{name:46.46}{r['rps']:>10.0f}{r['p50'] * 1e3:>10.2f}{r['p99'] * 1e3:>10.2f}"
                f"{r['errors']:>10.0f}"
            )
        print()
        for c in CONCURRENCIES:
            bare, minimal = rows[c]["bare"], rows[c]["minimal"]
            for label, r in (
                ("1 process", rows[c]["one"]),
                (f"{WORKERS} processes", rows[c]["multi"]),
                ("minimal", minimal),
            ):
                print(
                    f"c{c} {label:>11} / bare: throughput ratio {r['rps'] / bare['rps']:.2f}, "
                    f"p99 {r['p99'] * 1e3:.1f} ms ({r['p99'] / bare['p99']:.2f}x bare)"
                )
            print(
                f"c{c} ingress (1 process) / minimal verified endpoint: "
                f"{rows[c]['one']['rps'] / minimal['rps']:.2f}"
            )
        one = rows[top]["one"]
        print(
            f"c{top} R3 cluster / single node:    {r3['rps'] / one['rps']:.2f} throughput, "
            f"{r3['p99'] / one['p99']:.2f} p99"
        )
        print(
            f"messages stored in IMRELAY_IN:   {after - before} "
            f"({answered:.0f} answered while wrk counted; requests still in flight when it "
            "stopped are stored too)"
        )
        print(f"machine: {os.cpu_count()} cores shared by wrk, uvicorn and nats-server (3 of them for R3)")
        figures = []
        for c in CONCURRENCIES:
            bare = rows[c]["bare"]
            figures.append(
                figure(
                    f"ingress c{c}, 1 process / bare Starlette",
                    rows[c]["one"]["rps"] / bare["rps"],
                    "ratio",
                    baseline=rows[c]["minimal"]["rps"] / bare["rps"],
                    baseline_name="the minimal verified endpoint / bare Starlette",
                    target=">= 0.30" if c == 16 else "",
                )
            )
            for label, r in (("1 process", rows[c]["one"]), (f"{WORKERS} processes", rows[c]["multi"])):
                figures.append(
                    figure(
                        f"ingress c{c}, {label}: callbacks/s",
                        r["rps"],
                        "req/s",
                        baseline=bare["rps"],
                        baseline_name="bare Starlette endpoint",
                    )
                )
                figures.append(
                    figure(
                        f"ingress c{c}, {label}: p99",
                        r["p99"] * 1e3,
                        "ms",
                        baseline=bare["p99"] * 1e3,
                        baseline_name="bare Starlette endpoint",
                    )
                )
        figures.append(
            figure(
                f"ingress c{top}, 3-node cluster R3: callbacks/s",
                r3["rps"],
                "req/s",
                baseline=one["rps"],
                baseline_name="the same on a single node",
            )
        )
        print(f"results: {record('ingress', figures)}")
    finally:
        stop_all(procs)
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
