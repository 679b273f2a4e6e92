"""Email normalisation: one canonical form per mailbox, malformed addresses rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwise.contacts.normalize import email_hash, normalize_email
from postwise.errors import ValidationError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ann.Lee+news@Example.COM ", "ann.lee+news@example.com"),
        ("o'brien@example.co.uk", "o'brien@example.co.uk"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),
    ],
)
def test_addresses_normalise(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "a..b@example.com",
        "a@b",
        ".a@example.com",
        "a.@example.com",
        "a@-x.com",
        "a@exa_mple.com",
        "a b@example.com",
        "a@example.com\r\nBcc: x@example.com",
        "no-at",
        "x" * 65 + "@example.com",
        "@example.com",
        "a@",
    ],
)
def test_malformed_addresses_are_rejected(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_email(raw)
    assert info.value.field == "email"


def test_suppression_hash_is_of_the_normalised_form() -> None:
    assert email_hash("A@Example.com") == email_hash("a@example.com ")


@given(st.text(max_size=40))
def test_any_text_either_normalises_idempotently_or_is_rejected(raw: str) -> None:
    try:
        once = normalize_email(raw)
    except ValidationError:
        return
    assert normalize_email(once) == once
    assert "\n" not in once and "\r" not in once
