"""Render the event tables of docs/events.md from the AsyncAPI document.

    .venv/bin/python docs/tools/events_reference.py          # rewrite docs/events.md
    .venv/bin/python docs/tools/events_reference.py --check  # exit 1 when out of date

The part between the `events:begin` and `events:end` markers is generated; the rest of
the page is written by hand. tests/unit/test_demo_docs.py runs the check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "services" / "schemas" / "asyncapi.json"
PAGE = ROOT / "docs" / "events.md"
BEGIN, END = "<!-- events:begin (generated) -->", "<!-- events:end -->"


def type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(type_of(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    return str(kind)


def render() -> str:
    document = json.loads(ASYNCAPI.read_text())
    parts = [BEGIN, ""]
    for key, channel in sorted(document["channels"].items()):
        payload = channel["subscribe"]["message"]["payload"]
        data = payload["properties"]["data"]
        parts += [f"### `{key}`", "",
                  f"`type` `{payload['properties']['type']['const']}`, "
                  f"`dataschema` {payload['properties']['dataschema']['const']}", ""]
        parts += fields_table(data)
        for name, nested in sorted(data.get("$defs", {}).items()):
            parts += [f"`{name}` (in `{key}`):", "", *fields_table(nested)]
    parts.append(END)
    return "\n".join(parts)


def fields_table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for name, field in schema.get("properties", {}).items():
        meaning = " ".join(str(field.get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {type_of(field)} | "
                    f"{'yes' if name in required else ''} | {meaning} |")
    return [*rows, ""]


def updated(page: str) -> str:
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + render() + tail


def main(argv: list[str]) -> int:
    page = PAGE.read_text()
    fresh = updated(page)
    if "--check" in argv:
        if fresh != page:
            print(f"{PAGE} is out of date: run {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    PAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
