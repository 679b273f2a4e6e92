"""Every fixture of the bounce corpus is classified as its manifest says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from postwise.compliance.bounces import classify_message, evaluate_corpus
from postwise.errors import NotFoundError

CORPUS = Path(__file__).parent / "fixtures" / "bounces"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))["fixtures"]


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_fixture_is_classified_as_the_manifest_expects(entry: dict[str, str | None]) -> None:
    result = classify_message((CORPUS / str(entry["file"])).read_bytes())
    assert result.kind.value == entry["kind"], result.reason
    assert (result.recipient or "").lower() == (entry["recipient"] or "").lower()
    assert result.status == entry["status"]


def test_the_manifest_lists_every_message_file_and_nothing_else() -> None:
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "manifest.json"}
    assert on_disk == {e["file"] for e in MANIFEST}


def test_the_corpus_is_large_and_varied_enough_to_mean_something() -> None:
    kinds = {e["kind"] for e in MANIFEST}
    assert len(MANIFEST) >= 40
    assert kinds == {"hard", "soft", "block", "complaint", "auto_reply", "unknown"}


def test_the_corpus_holds_no_address_outside_reserved_example_domains() -> None:
    address = re.compile(rb"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)")
    for path in CORPUS.glob("*.eml"):
        for domain in address.findall(path.read_bytes()):
            labels = domain.decode().lower().split(".")
            assert "example" in labels or labels[-1] in {"example", "invalid", "test"}, (
                path.name,
                domain,
            )


def test_evaluate_corpus_reports_accuracy_count_and_confusion() -> None:
    report = evaluate_corpus(CORPUS)
    assert report["count"] == len(MANIFEST)
    assert report["accuracy"] == report["correct"] / report["count"]
    assert sum(sum(row.values()) for row in report["confusion"].values()) == report["count"]
    assert report["accuracy"] >= 0.95, report["mismatches"]


def test_evaluate_corpus_counts_a_wrong_expectation_as_a_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes((CORPUS / "postfix-user-unknown.eml").read_bytes())
    manifest = {"fixtures": [{"file": "a.eml", "kind": "soft", "recipient": None, "status": None}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = evaluate_corpus(tmp_path)
    assert (report["correct"], report["kind_correct"]) == (0, 0)
    assert report["confusion"] == {"soft": {"hard": 1}}
    assert report["mismatches"][0]["got"]["kind"] == "hard"


def test_evaluate_corpus_without_a_manifest_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"manifest\.json"):
        evaluate_corpus(tmp_path)
