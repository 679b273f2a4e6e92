"""``postwise bench bounces`` reports each labelled corpus on its own."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from postwise.devtools.bench.compliance import bench_bounces, default_corpora

FIXTURES = Path(__file__).parent / "fixtures"
ORIGINAL = FIXTURES / "bounces"
HELDOUT = FIXTURES / "bounces-heldout"


def _count(corpus: Path) -> int:
    return len(json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))["fixtures"])


def test_by_default_both_fixture_corpora_are_reported_separately() -> None:
    assert [p.resolve() for p in default_corpora()] == [ORIGINAL.resolve(), HELDOUT.resolve()]
    result = CliRunner().invoke(bench_bounces, ["--repeat", "1", "--process", "0", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    reported = {Path(c["corpus"]).name: c for c in figures["corpora"]}
    assert list(reported) == ["bounces", "bounces-heldout"]
    for name, corpus in (("bounces", ORIGINAL), ("bounces-heldout", HELDOUT)):
        assert reported[name]["count"] == _count(corpus)
        assert reported[name]["accuracy"] == round(
            reported[name]["correct"] / reported[name]["count"], 4
        )
    assert figures["messages"] == _count(ORIGINAL) + _count(HELDOUT)
    assert figures["classify_per_second"] > 0
    assert "processing" not in figures


def test_a_corpus_named_on_the_command_line_is_the_only_one_reported(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes((ORIGINAL / "postfix-user-unknown.eml").read_bytes())
    manifest = {"fixtures": [{"file": "a.eml", "kind": "soft", "recipient": None, "status": None}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(
        bench_bounces, ["--corpus", str(tmp_path), "--repeat", "1", "--process", "0"]
    )
    assert result.exit_code == 0, result.output
    assert f"corpus: {tmp_path} (1 messages)" in result.output
    assert "accuracy: 0/1 = 0.0% (kind only: 0/1 = 0.0%)" in result.output
    assert "miss a.eml" in result.output
    assert "bounces-heldout" not in result.output
