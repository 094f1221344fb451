"""A private RabbitMQ node for one test: its own node name, ports, data and logs in a
temporary directory, no plugins. Stopping and restarting it is a real broker outage
for the clients, without touching the shared broker other tests use.

Runs `rabbitmq-server` from `/usr/lib/rabbitmq/bin` directly (the `/usr/sbin` wrapper
switches to the `rabbitmq` user, which could not write the temporary directory) with
HOME in the temporary directory, so the server and our `rabbitmqctl` share an Erlang
cookie of their own. Start-up takes ~5 s on the shared 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.ci import skip_or_fail
from tests.support.processes import free_port

_SBIN_CANDIDATES = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/sbin")


def _tool(name: str) -> str | None:
    for directory in _SBIN_CANDIDATES:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name) if os.geteuid() != 0 else None


class PrivateRabbitMQ:
    def __init__(self, directory: Path) -> None:
        server, ctl = _tool("rabbitmq-server"), _tool("rabbitmqctl")
        if server is None or ctl is None:
            skip_or_fail("rabbitmq-server not installed (apt-get install rabbitmq-server)")
        assert server is not None and ctl is not None
        self._server, self._ctl = server, ctl
        self.directory = directory
        self.node = f"harmonet-test-{secrets.token_hex(4)}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        home = directory / "home"
        for sub in ("home", "mnesia", "log"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o600)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        self._env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(directory / "erl_crash.dump"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._ctl, "-n", self.node, *args], env=self._env,
                              cwd=self.directory, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, *, timeout: float = 60) -> float:
        """Start the node (data kept from an earlier run); returns the seconds it took."""
        started = time.monotonic()
        with (self.directory / "server.log").open("ab") as log:
            self.proc = subprocess.Popen([self._server], env=self._env, cwd=self.directory,
                                         stdout=log, stderr=log, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}: {tail}")
            if self.ctl("await_startup", "--timeout", "2", timeout=10).returncode == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"private RabbitMQ not up within {timeout}s")
            time.sleep(0.3)

    def stop(self) -> float:
        """Stop the node as an operator would; returns the seconds it took."""
        started = time.monotonic()
        self.ctl("stop", timeout=60)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return time.monotonic() - started

    def kill(self) -> None:
        """The whole node's process group at once (beam, epmd children, inet_gethost)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def private_rabbitmq(directory: Path) -> Iterator[PrivateRabbitMQ]:
    node = PrivateRabbitMQ(directory)
    try:
        node.start()
    except (RuntimeError, TimeoutError) as error:
        node.kill()
        skip_or_fail(f"cannot start a private RabbitMQ node: {error}")
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
        node.kill()
