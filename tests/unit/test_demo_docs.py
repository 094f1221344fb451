"""The docs answer what the code does: links resolve, every metric, alert, setting and event
field is documented, the configuration example is valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.config import parse_config
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        missing_anchor = anchor and path.suffix == ".md" and anchor not in _anchors(path)
        if not path.exists() or missing_anchor:
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readme_links_the_documentation() -> None:
    assert "docs/index.md" in _links(ROOT / "README.md")
    linked = {Path(link.partition("#")[0]).name for link in _links(DOCS / "index.md")}
    for page in DOCS.glob("*.md"):
        if page.name not in ("index.md", "reliability.md"):
            assert page.name in linked, f"docs/index.md does not link {page.name}"


def test_every_metric_is_documented() -> None:
    source = (ROOT / "services" / "metrics.py").read_text()
    names = set(re.findall(r"\"(harmonet_[a-z0-9_]+)\"", source))
    page = (DOCS / "metrics.md").read_text()
    assert names, "no metric names found in services/metrics.py"
    assert not sorted(n for n in names if n not in page)


def test_every_alert_rule_is_documented() -> None:
    rules = ROOT / "k8s" / "base" / "monitoring" / "harmonet.rules.yml"
    if not rules.exists():
        pytest.skip("no alert rules in this checkout")
    alerts = {rule["alert"] for group in yaml.safe_load(rules.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    page = (DOCS / "metrics.md").read_text()
    assert not sorted(a for a in alerts if f"`{a}`" not in page)


def test_every_setting_is_documented() -> None:
    page = (DOCS / "configuration.md").read_text()
    names = {f"HARMONET_{field.upper()}" for field in Settings.model_fields}
    assert not sorted(n for n in names if f"`{n}`" not in page)


def test_the_full_configuration_example_is_valid() -> None:
    page = (DOCS / "configuration.md").read_text()
    [example] = [block for block in re.findall(r"```yaml\n(.*?)```", page, flags=re.DOTALL)
                 if block.startswith("study:")]
    config = parse_config(example, source="docs/configuration.md")
    assert {s.id for s in config.sites} == {"milan", "naples", "leiden"}
    assert config.protocol_for_site("leiden") is not None


def test_the_events_reference_matches_the_asyncapi_document() -> None:
    checked = subprocess.run([sys.executable, str(DOCS / "tools" / "events_reference.py"),
                              "--check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    page = (DOCS / "events.md").read_text()
    for schema in (ROOT / "services" / "schemas").glob("*.json"):
        if schema.name != "asyncapi.json":
            assert f"### `{schema.stem}`" in page


def test_the_subscriber_example_is_python_that_compiles() -> None:
    page = (DOCS / "events.md").read_text()
    [example] = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
                 if "aio_pika" in b]
    compile(example, "docs/events.md", "exec")
