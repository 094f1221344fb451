"""A throw-away PKI for TLS tests: a CA, and server, client and stranger (signed by a CA
nobody trusts) certificates, made with the `openssl` command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.ci import skip_or_fail


def make_certificates(directory: Path) -> Path:
    """`ca.pem`, `server.pem/.key`, `client.pem/.key`, `stranger.pem/.key` in `directory`."""
    if shutil.which("openssl") is None:
        skip_or_fail("openssl not installed")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            f"/CN=harmonet-test-{ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "rogue-ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem")
    return directory
