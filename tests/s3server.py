"""An S3-compatible server for the tests: moto's server mode in its own process, on loopback by default.

Configuration (environment):

- `GLMOPS_TEST_S3_HOST`: the address moto listens on and clients (trainer pods too) reach it at;
  it wins over the `host` a test passes (the local cluster's host address, which pods in their
  own network namespaces route to); default 127.0.0.1.
- `GLMOPS_TEST_S3_ENDPOINT` (with `GLMOPS_TEST_S3_ACCESS_KEY`, `GLMOPS_TEST_S3_SECRET_KEY`): use
  an S3-compatible server that already runs (MinIO, Ceph RGW) instead of starting moto.

moto checks signatures when started with authentication on: the first requests (made here, before
any test) create an IAM user with S3 rights and its access key; after that every request must
be signed with a key moto knows, so a test that forgot to pass credentials fails as on AWS.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST_ENV = "GLMOPS_TEST_S3_HOST"
ENDPOINT_ENV = "GLMOPS_TEST_S3_ENDPOINT"
REGION = "us-east-1"
# Requests moto serves unauthenticated before it starts checking signatures: the three IAM calls
# below (create user, attach a policy, create an access key).
SETUP_ACTIONS = 3
POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'


@dataclass
class S3Server:
    """Where the server is and a key it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _buckets: list[str] = field(default_factory=list)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client (path-style, as for MinIO)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def env(self, prefix: str = "") -> dict[str, str]:
        """The variables the trainer reads for a location (`prefix`: e.g. GLMOPS_DATASET_)."""
        return {
            f"{prefix}AWS_ACCESS_KEY_ID": self.access_key,
            f"{prefix}AWS_SECRET_ACCESS_KEY": self.secret_key,
            f"{prefix}AWS_ENDPOINT_URL": self.endpoint_url,
            f"{prefix}AWS_REGION": REGION,
        }

    def stop(self) -> None:
        """End the moto process (when this fixture started one)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.exists() else ""


def start_s3_server(host: str | None = None, timeout_s: float = 60.0) -> S3Server:
    """The configured external server, or a new moto server with authentication on, listening on `host`."""
    external = os.environ.get(ENDPOINT_ENV)
    if external:
        return S3Server(external, os.environ["GLMOPS_TEST_S3_ACCESS_KEY"], os.environ["GLMOPS_TEST_S3_SECRET_KEY"])
    host = os.environ.get(HOST_ENV) or host or "127.0.0.1"
    port = _free_port(host)
    log_path = Path(tempfile.mkstemp(prefix="glmops-moto-", suffix=".log")[1])
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS), MOTO_ALLOW_NONEXISTENT_REGION="true")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    endpoint = f"http://{host}:{port}"
    server = S3Server(endpoint, "", "", process, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            # moto's own dashboard endpoint: answers without counting as an AWS action.
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto did not answer on {endpoint} after {timeout_s:.0f} s:\n{_tail(log_path)}") from None
            time.sleep(0.2)
    try:
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
        )
        iam.create_user(UserName="glmops-trainer")
        iam.put_user_policy(UserName="glmops-trainer", PolicyName="s3", PolicyDocument=POLICY)
        key = iam.create_access_key(UserName="glmops-trainer")["AccessKey"]
    except BaseException:
        server.stop()
        raise
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    return server
