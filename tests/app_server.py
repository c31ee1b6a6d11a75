"""Start ``scripts/app.py`` on a free localhost port for the server and browser tests, and stop it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(out: Path, *args: str, timeout: float = float(os.environ.get("APP_START_TIMEOUT", 600))):
    """Serve the app (default: the shipped FaceWorld models on the CPU) until the block ends; yields its URL.
    The server's log is ``out/server.log``; $APP_START_TIMEOUT (seconds, default 600) bounds its start."""
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "server.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "LDM_PROGRESS": "0"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "app.py"), "--port", str(port), "--out", str(out / "files"),
         "--threads", "1", *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with {process.returncode}:\n{(out / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{(out / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
