"""An S3-compatible server for the object-storage tests: moto in server mode, in its own OS
process on 127.0.0.1 (a real HTTP server speaking the S3 protocol; no client is mocked)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pyarrow.fs as pafs


class S3Server:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "S3Server":
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the one process this fixture started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def fs(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 region="us-east-1")

    def bucket(self, prefix: str = "bkt") -> str:
        """A new, empty bucket of this test's own."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                          region="us-east-1", allow_bucket_creation=True).create_dir(name)
        return name
