"""``postwise domain check`` against a real DNS server on loopback that answers from a zone."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from click.testing import CliRunner

from postwise.cli import cli
from postwise.compliance.domain import CheckStatus, check_domain, make_resolver
from postwise.delivery.dkim import generate_key


class ZoneServer:
    """A UDP DNS server answering TXT queries from ``zone`` (name -> TXT values)."""

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        # A short timeout lets the serving thread notice the stop flag: closing a socket does
        # not wake a thread blocked in recvfrom.
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = False

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            self.queries.append(name)
            if name not in self.zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                texts = [
                    " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
                    for value in self.zone[name]
                ]
                response.answer.append(
                    dns.rrset.from_text(
                        question.name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, *texts
                    )
                )
            self.sock.sendto(response.to_wire(), peer)

    def __enter__(self) -> ZoneServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = generate_key("rsa-sha256")
    return key.private_key_pem, key.dns_record


def _zone(dkim_record: str, **overrides: list[str]) -> dict[str, list[str]]:
    zone = {
        "example.com": ["v=spf1 include:_spf.relay.example -all", "google-site-verification=x"],
        "_spf.relay.example": ["v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all"],
        "postwise._domainkey.example.com": [dkim_record],
        "_dmarc.example.com": ["v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"],
    }
    zone.update({k.replace("__", "."): v for k, v in overrides.items()})
    return zone


def _check(
    zone: dict[str, list[str]],
    pem: bytes | None,
    domain: str = "example.com",
) -> dict[str, tuple[CheckStatus, str]]:
    with ZoneServer(zone) as server:
        report = check_domain(
            domain,
            selector="postwise",
            private_key_pem=pem,
            resolver=make_resolver(["127.0.0.1"], port=server.port, timeout=2),
        )
    return {c.name: (c.status, c.detail) for c in report.checks}


def test_a_correct_domain_passes_every_check(rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    assert len(record) > 255  # a 2048-bit key spans several TXT strings, joined on reading
    result = _check(_zone(record), pem)
    assert {name: status for name, (status, _) in result.items()} == {
        "spf": CheckStatus.OK,
        "dkim": CheckStatus.OK,
        "dmarc": CheckStatus.OK,
    }
    assert "1 DNS-querying terms" in result["spf"][1]


def test_a_dkim_key_that_is_not_ours_fails(rsa_key: tuple[bytes, str]) -> None:
    other = generate_key("rsa-sha256").dns_record
    status, detail = _check(_zone(other), rsa_key[0])["dkim"]
    assert status is CheckStatus.FAIL and "does not match" in detail


def test_an_ed25519_key_is_compared_too() -> None:
    key = generate_key("ed25519-sha256")
    assert _check(_zone(key.dns_record), key.private_key_pem)["dkim"][0] is CheckStatus.OK
    other = generate_key("ed25519-sha256")
    assert _check(_zone(other.dns_record), key.private_key_pem)["dkim"][0] is CheckStatus.FAIL
    rsa = generate_key("rsa-sha256")
    status, detail = _check(_zone(rsa.dns_record), key.private_key_pem)["dkim"]
    assert status is CheckStatus.FAIL and "ed25519" in detail


def test_a_revoked_or_missing_dkim_key_fails(rsa_key: tuple[bytes, str]) -> None:
    assert _check(_zone("v=DKIM1; k=rsa; p="), rsa_key[0])["dkim"][0] is CheckStatus.FAIL
    zone = _zone(rsa_key[1])
    del zone["postwise._domainkey.example.com"]
    status, detail = _check(zone, rsa_key[0])["dkim"]
    assert status is CheckStatus.FAIL and "postwise._domainkey.example.com" in detail


@pytest.mark.parametrize(
    ("records", "status", "phrase"),
    [
        (["v=spf1 +all"], CheckStatus.FAIL, "+all"),
        (["v=spf1 a -all", "v=spf1 mx -all"], CheckStatus.FAIL, "more than one"),
        (["v=spf1 a mx ?all"], CheckStatus.WARN, "neutral"),
        (["v=spf1 ip4:192.0.2.1"], CheckStatus.WARN, "no 'all'"),
        ([], CheckStatus.FAIL, "no SPF record"),
    ],
)
def test_spf_mistakes_are_reported(
    rsa_key: tuple[bytes, str], records: list[str], status: CheckStatus, phrase: str
) -> None:
    zone = _zone(rsa_key[1])
    zone["example.com"] = records or ["unrelated"]
    found, detail = _check(zone, rsa_key[0])["spf"]
    assert found is status and phrase in detail


def test_spf_over_ten_lookups_through_includes_fails(rsa_key: tuple[bytes, str]) -> None:
    zone = _zone(rsa_key[1])
    zone["example.com"] = ["v=spf1 include:a.relay.example include:b.relay.example -all"]
    zone["a.relay.example"] = ["v=spf1 a mx ptr exists:%{i}.x.example a:one.example -all"]
    zone["b.relay.example"] = [
        "v=spf1 mx:x.example a:two.example a:three.example include:c.relay.example -all"
    ]
    zone["c.relay.example"] = ["v=spf1 ip4:192.0.2.1 -all"]
    status, detail = _check(zone, rsa_key[0])["spf"]
    assert status is CheckStatus.FAIL and "11 DNS-querying terms" in detail


def test_dmarc_policies(rsa_key: tuple[bytes, str]) -> None:
    zone = _zone(rsa_key[1])
    zone["_dmarc.example.com"] = ["v=DMARC1; p=none; rua=mailto:d@example.com"]
    assert _check(zone, rsa_key[0])["dmarc"][0] is CheckStatus.WARN
    zone["_dmarc.example.com"] = ["v=DMARC1; p=reject"]
    status, detail = _check(zone, rsa_key[0])["dmarc"]
    assert status is CheckStatus.WARN and "rua" in detail
    del zone["_dmarc.example.com"]
    assert _check(zone, rsa_key[0])["dmarc"][0] is CheckStatus.FAIL


def test_a_subdomain_inherits_the_organisational_dmarc_record(rsa_key: tuple[bytes, str]) -> None:
    zone = _zone(rsa_key[1])
    zone["news.example.com"] = ["v=spf1 include:_spf.relay.example -all"]
    zone["postwise._domainkey.news.example.com"] = [rsa_key[1]]
    status, detail = _check(zone, rsa_key[0], domain="news.example.com")["dmarc"]
    assert status is CheckStatus.OK and "inherited from example.com" in detail


def test_an_unreachable_dns_server_fails_the_checks_without_crashing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = check_domain(
        "example.com",
        selector="postwise",
        resolver=make_resolver(["127.0.0.1"], port=port, timeout=0.5),
    )
    assert not report.ok
    assert all(c.status is CheckStatus.FAIL and "failed" in c.detail for c in report.checks)


def test_the_cli_checks_with_the_configured_key(rsa_key: tuple[bytes, str], tmp_path: Path) -> None:
    pem, record = rsa_key
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(pem)
    env = {
        "POSTWISE_DATA_DIR": str(tmp_path),
        "POSTWISE_DKIM_PRIVATE_KEY_PATH": str(key_path),
        "POSTWISE_SECRET_KEY": "test-secret-key-not-for-production",
    }
    runner = CliRunner()
    with ZoneServer(_zone(record)) as server:
        ok = runner.invoke(
            cli,
            [
                "domain",
                "check",
                "example.com",
                "--json",
                "--nameserver",
                f"127.0.0.1:{server.port}",
            ],
            env=env,
        )
        zone = _zone(generate_key("ed25519-sha256").dns_record)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    with ZoneServer(zone) as server:
        bad = runner.invoke(
            cli,
            ["domain", "check", "example.com", "--nameserver", f"127.0.0.1:{server.port}"],
            env=env,
        )
    assert bad.exit_code == 1
    assert "[FAIL] dkim" in bad.output
