"""Run an ASGI app with uvicorn in a background thread on loopback (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on 127.0.0.1 and a free port."""

    def __init__(self, app, host: str = "127.0.0.1", start_timeout: float = 30) -> None:
        import uvicorn

        self.host, self.port, self.start_timeout = host, free_port(host), start_timeout
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
