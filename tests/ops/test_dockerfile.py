"""The container image definition (no Docker here to build it): parsed, not built. What it
checks: non-root user, `harmonet` entrypoint, every package the wheel needs is copied and
not excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

from tests.ops.k8s import REPO


def _instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    found = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_runs_as_non_root_with_the_harmonet_entrypoint() -> None:
    final = _final_stage()
    assert final[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users == ["10001:10001"]  # numeric, so runAsNonRoot can verify it
    assert json.loads(next(rest for keyword, rest in final if keyword == "ENTRYPOINT")) == [
        "harmonet"]
    exposed = next(rest for keyword, rest in final if keyword == "EXPOSE").split()
    assert exposed == ["11112", "8000", "9100"]


def test_copies_every_package_the_wheel_lists_and_dockerignore_keeps_them() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    top_level = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    copied = {rest.split()[0] for keyword, rest in _instructions() if keyword == "COPY"
              and not rest.startswith("--from")}
    assert top_level <= copied, top_level - copied
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in [*top_level, "pyproject.toml", "README.md"]:
        ignored = False
        for pattern in patterns:  # last match wins, as in Docker
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                ignored = not negated
        assert not ignored, path
