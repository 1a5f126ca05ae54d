"""A real S3 endpoint on loopback for the tests: moto's server in its own process.

Contrail talks to it exactly as to AWS: s3fs over HTTP, with the endpoint, region and keys
from the standard `AWS_*` variables. It keeps objects in memory, honours conditional writes
and has no rename and no locks, which is the point: nothing may rely on them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """`with S3Server() as s3:` starts the endpoint; `s3.env` is what a client process needs."""

    def __init__(self, log_path: str | None = None) -> None:
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"contrail-moto-{os.getpid()}.log")
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "contrail-test",
            "AWS_SECRET_ACCESS_KEY": "contrail-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> S3Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(self.log_path, "wb"),  # every request, for a failing test's post-mortem
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=1)
                return self
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto S3 server did not start on {self.endpoint}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,  # the tests read what other processes just wrote
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket: its name."""
        name = f"contrail-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def use(self) -> None:
        """Point this process's S3 clients at the endpoint (tests that run steps in-process)."""
        os.environ.update(self.env)
