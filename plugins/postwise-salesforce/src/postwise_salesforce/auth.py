"""OAuth 2.0 tokens for the Salesforce REST API: client credentials or JWT bearer.

Both post a form to ``<login_url>/services/oauth2/token`` and get back ``access_token`` and
``instance_url`` (where the REST API of the org lives).

* client credentials: ``grant_type=client_credentials`` with the connected app's consumer key
  and secret (the app's "Run As" user acts); ``login_url`` must be the org's My Domain URL;
* JWT bearer: ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with an RS256-signed
  assertion (``iss`` consumer key, ``sub`` username, ``aud`` https://login.salesforce.com or
  test.salesforce.com or a community URL (never the My Domain URL posted to, which Salesforce
  refuses with ``invalid_grant: audience is invalid``), ``exp`` in three
  minutes), signed with the key whose certificate the connected app holds.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from postwise.errors import ConfigurationError
from postwise_salesforce.options import SalesforceOptions

__all__ = ["JWT_GRANT", "Token", "jwt_assertion", "request_token"]

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 - a URL path, not a secret


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    instance_url: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_assertion(options: SalesforceOptions, *, now: float | None = None) -> str:
    """The signed JWT of the bearer flow."""
    key = serialization.load_pem_private_key(options.key_pem(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError("crm_options.salesforce.private_key must be an RSA key")
    issued = int(time.time() if now is None else now)
    header = _b64url(json.dumps({"alg": "RS256"}).encode())
    claims = _b64url(
        json.dumps(
            {
                "iss": options.client_id,
                "sub": options.username,
                "aud": options.jwt_audience(),
                "exp": issued + 180,
            }
        ).encode()
    )
    signing_input = f"{header}.{claims}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{_b64url(signature)}"


def request_token(client: httpx.Client, options: SalesforceOptions) -> Token:
    """A fresh access token; ConfigurationError when Salesforce refuses the credentials."""
    if not options.client_id:
        raise ConfigurationError(
            "crm_options.salesforce.client_id is not set: use the connected app's consumer key"
        )
    if options.auth == "jwt":
        if not options.username:
            raise ConfigurationError("crm_options.salesforce.username is needed by the jwt flow")
        form = {"grant_type": JWT_GRANT, "assertion": jwt_assertion(options)}
    else:
        secret = options.client_secret.get_secret_value()
        if not secret:
            raise ConfigurationError(
                "crm_options.salesforce.client_secret is not set (client credentials flow)"
            )
        form = {
            "grant_type": "client_credentials",
            "client_id": options.client_id,
            "client_secret": secret,
        }
    response = client.post(options.login_url + TOKEN_PATH, data=form)
    if response.status_code >= 500:
        raise httpx.HTTPStatusError(
            f"Salesforce's token endpoint answered HTTP {response.status_code}",
            request=response.request,
            response=response,
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not body.get("access_token"):
        raise ConfigurationError(
            f"Salesforce refused the {options.auth} login (HTTP {response.status_code}: "
            f"{body.get('error', '-')}: {body.get('error_description', '-')}); check "
            "crm_options.salesforce (client_id, secret or key, login_url, the app's policies)"
        )
    return Token(body["access_token"], str(body.get("instance_url") or options.login_url))
