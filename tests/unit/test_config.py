from pathlib import Path

import pytest

from services.cli import main
from services.config import ConfigError, load_config, parse_config

VALID = """\
study: DEMO
sites:
  - id: milan
    scanners:
      - id: milan-prisma
        ae_titles: [MILANPRISMA]
        hosts: [127.0.0.1, 10.1.0.0/16]
protocols:
  - id: core
    series:
      - type: t1w
        match: {series_description: "(?i)t1|mprage"}
        severity: exclude
        expect:
          RepetitionTime: {value: 2300, tolerance: "1%"}
          Rows: {value: 256}
"""


def test_valid_config_parses_with_defaults() -> None:
    config = parse_config(VALID, source="x.yaml")
    ref = config.scanner_for_ae("MILANPRISMA")
    assert ref is not None and ref.site == "milan" and ref.scanner.id == "milan-prisma"
    assert config.scanner_for_ae("UNKNOWN") is None
    assert ref.scanner.accepts_host("10.1.2.3") and not ref.scanner.accepts_host("10.2.0.1")
    assert config.is_phantom_name("FBIRN^PHANTOM") and not config.is_phantom_name("DOE^JANE")
    assert config.protocols[0].series[0].expect["RepetitionTime"].tolerance == "1%"


def test_builtin_demo_config_is_valid() -> None:
    config = load_config(None)
    assert config.scanner_for_ae("MILANPRISMA") is not None


@pytest.mark.parametrize(
    ("broken", "line", "words"),
    [
        (VALID.replace("id: milan\n", "id: Milan Site\n"), 3, "sites.0.id"),
        (VALID.replace("[MILANPRISMA]", "[THIS_AE_TITLE_IS_TOO_LONG]"), 6, "ae_titles"),
        (VALID.replace("10.1.0.0/16", "not-an-ip"), 7, "hosts"),
        (VALID.replace('"1%"', '"one percent"'), 15, "tolerance"),
        (VALID.replace("severity: exclude", "severity: maybe"), 13, "severity"),
        (VALID.replace("study: DEMO\n", "study: DEMO\nunknown_key: 1\n"), 2, "unknown_key"),
        (VALID.replace('"(?i)t1|mprage"', '"(unclosed"'), 12, "match"),
    ],
)
def test_errors_name_the_line(broken: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(broken, source="site.yaml")
    first = info.value.errors[0]
    assert first.startswith(f"site.yaml:{line}:"), first
    assert words in first


def test_duplicate_ae_title_rejected() -> None:
    doubled = VALID.replace(
        "        hosts: [127.0.0.1, 10.1.0.0/16]\n",
        "      - id: milan-skyra\n        ae_titles: [MILANPRISMA]\n",
    )
    with pytest.raises(ConfigError, match="duplicate AE title 'MILANPRISMA'"):
        parse_config(doubled, source="x.yaml")


def test_invalid_yaml_names_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("study: DEMO\nsites: [\n  - id: x\n", source="bad.yaml")
    assert info.value.errors[0].startswith("bad.yaml:")
    assert "invalid YAML" in info.value.errors[0]


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID)
    bad.write_text(VALID.replace("severity: exclude", "severity: maybe"))
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 1
    assert f"{bad}:13:" in capsys.readouterr().err
