"""The generated HeliosDeployment reference (docs/) and `helios docs`: current, complete, honest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from helios_operator import docs
from helios_operator.cli import main
from helios_operator.commands.docs import generated_files
from helios_operator.crds import helios_deployment_crd
from helios_operator.spec import SpecModel

ROOT = Path(__file__).resolve().parent.parent


def test_committed_reference_is_current() -> None:
    committed = (ROOT / docs.REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == docs.field_reference(), f"{docs.REFERENCE_PATH} is stale: run `helios docs`"


def _sections(markdown: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """heading path -> {field: its table row}, and anchor -> heading path."""
    sections: dict[str, dict[str, str]] = {}
    anchors: dict[str, str] = {}
    current = None
    for line in markdown.splitlines():
        if heading := re.fullmatch(r"### `([^`]+)`", line):
            current = heading[1]
            sections[current] = {}
            anchors[re.sub(r"[^a-z0-9_-]", "", current.lower())] = current
        elif current and (row := re.match(r"\| `([^`]+)` \|", line)):
            sections[current][row[1]] = line
    return sections, anchors


def test_reference_covers_every_crd_field_with_its_description() -> None:
    """Every property of the CRD's schema (built from the same models) has a row, in the right section."""
    sections, anchors = _sections(docs.field_reference())
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]

    def check(node: dict[str, Any], path: str, section: str) -> None:
        rows = sections[section]
        assert set(rows) == set(node["properties"]), f"{path}: reference rows differ from the CRD's fields"
        for name, sub in node["properties"].items():
            assert sub["description"] in rows[name].replace("\\|", "|"), f"{path}.{name}: description missing"
            child = sub.get("items", sub)
            if "properties" in child:
                suffix = "[]" if "items" in sub else ""
                link = re.search(r"\(#([^)]+)\)", rows[name])
                assert link, f"{path}.{name}: no link to its section"
                check(child, f"{path}.{name}{suffix}", anchors[link[1]])

    check(root["spec"], "spec", "spec")
    check(root["status"], "status", "status")


def test_a_field_without_description_is_refused() -> None:
    class Undocumented(SpecModel):
        size: int = 1

    with pytest.raises(ValueError, match=r"Undocumented\.size has no description"):
        docs._section("spec.x", Undocumented, {})


def test_helios_docs_writes_and_checks(tmp_path, capsys) -> None:
    assert main(["docs", "--root", str(tmp_path)]) == 2  # not a repository root
    (tmp_path / "charts" / "helios").mkdir(parents=True)
    (tmp_path / "charts" / "helios" / "Chart.yaml").write_text("name: helios\n", encoding="utf-8")
    assert main(["docs", "--root", str(tmp_path), "--check"]) == 1
    assert not (tmp_path / docs.REFERENCE_PATH).exists()
    assert main(["docs", "--root", str(tmp_path)]) == 0
    for relative, text in generated_files().items():
        assert (tmp_path / relative).read_text(encoding="utf-8") == text
    assert main(["docs", "--root", str(tmp_path), "--check"]) == 0
    (tmp_path / docs.REFERENCE_PATH).write_text("edited by hand\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["docs", "--root", str(tmp_path), "--check"]) == 1
    assert capsys.readouterr().out.strip() == f"stale: {docs.REFERENCE_PATH}"
    assert main(["docs", "--root", str(ROOT), "--check"]) == 0
