"""A release server for the measurement scripts in this folder: started on a free loopback
port with its log in a temporary file, waited for until `/readyz` answers, and stopped with
SIGTERM (killed after 15 s). Python standard library only.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

READY_WAIT_S = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, flags, log_prefix):
    """Starts `binary serve` with `flags` on a free port; returns (process, port, log file)
    once it is ready, or raises (and stops it) when it is not within READY_WAIT_S."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    server = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--log-format", "json", *flags],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    deadline = time.time() + READY_WAIT_S
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return server, port, log
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            stop(server, log)
            raise RuntimeError(f"server did not start; see {log.name}")
        time.sleep(0.05)


def stop(server, log=None):
    """Stops `server` (SIGTERM, then SIGKILL after 15 s); removes its log when given."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if log is not None:
        log.close()
        os.unlink(log.name)
