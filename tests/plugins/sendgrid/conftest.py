"""Fixtures for the SendGrid plugin: a local SendGrid, a webhook signing key, settings."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fake_sendgrid import API_KEY, FakeSendGrid

from postwise.settings import Settings


@pytest.fixture
def sendgrid_server() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid(API_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def signing_key() -> ec.EllipticCurvePrivateKey:
    """The key SendGrid would sign webhook requests with (P-256, as SendGrid uses)."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def public_key_text(signing_key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
def settings(make_settings: Any, public_key_text: str) -> Settings:
    """Settings with the SendGrid plugin configured (the app's webhook reads them)."""
    result: Settings = make_settings(
        provider="sendgrid",
        provider_options={"sendgrid": {"api_key": API_KEY, "webhook_public_key": public_key_text}},
    )
    return result
