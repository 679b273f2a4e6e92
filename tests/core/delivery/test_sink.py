"""The local SMTP sink: real SMTP in, one exact .eml file per message out."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from postwise.delivery.provider import Outcome, OutgoingMessage
from postwise.delivery.smtp import SmtpProvider
from postwise.devtools.sink import SmtpSink, _SinkSession
from postwise.errors import ConfigurationError


def raw_message(index: int, message_id: str | None = None) -> bytes:
    header = f"Message-ID: <{message_id}>\r\n" if message_id is not None else ""
    return (
        f"From: news@example.com\r\nTo: rcpt{index}@example.com\r\nSubject: Issue {index}\r\n"
        f"{header}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {index}\r\n.a dotted line\r\n\r\nBye\r\n"
    ).encode()


def send(port: int, *raws: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="test.example", timeout=5) as client:
        for index, raw in enumerate(raws):
            client.sendmail("news@example.com", [f"rcpt{index}@example.com"], raw)


def eml_files(outbox: Path) -> list[Path]:
    return sorted(outbox.glob("*.eml"))


def test_each_message_becomes_one_file_with_exactly_the_bytes_received(tmp_path: Path) -> None:
    raws = [raw_message(n, f"m{n}@postwise.test") for n in range(3)]
    with SmtpSink(tmp_path / "outbox") as sink:
        send(sink.port, *raws)
    files = eml_files(tmp_path / "outbox")
    assert [f.name for f in files] == [
        "00000001-m0@postwise.test.eml",
        "00000002-m1@postwise.test.eml",
        "00000003-m2@postwise.test.eml",
    ]
    assert [f.read_bytes() for f in files] == raws
    parsed = message_from_bytes(files[1].read_bytes(), policy=policy.default)
    assert parsed["Subject"] == "Issue 1"
    assert parsed.get_content() == "Hello 1\r\n.a dotted line\r\n\r\nBye\r\n"


def test_the_reply_names_the_file_so_the_provider_reports_it(tmp_path: Path) -> None:
    message = OutgoingMessage("m0", "a@example.com", "b@example.com", raw_message(0, "x@y"))
    with SmtpSink(tmp_path) as sink, SmtpProvider("127.0.0.1", sink.port) as provider:
        [result] = provider.send_batch([message])
        sink.flush()
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "00000001-x@y"
    assert (tmp_path / "00000001-x@y.eml").read_bytes() == message.raw


def test_a_hostile_message_id_cannot_leave_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    with SmtpSink(outbox) as sink:
        send(sink.port, raw_message(0, "../../etc/passwd\\x y:z@evil"))
    [file] = eml_files(outbox)
    assert file.parent == outbox
    assert file.name == "00000001-.._.._etc_passwd_x_y_z@evil.eml"
    assert list(tmp_path.iterdir()) == [outbox]


def test_a_message_without_message_id_is_still_stored(tmp_path: Path) -> None:
    with SmtpSink(tmp_path) as sink:
        send(sink.port, raw_message(0))
    assert [f.name for f in eml_files(tmp_path)] == ["00000001-no-message-id.eml"]


def test_numbering_continues_in_a_reused_outbox_and_nothing_is_overwritten(
    tmp_path: Path,
) -> None:
    with SmtpSink(tmp_path) as sink:
        send(sink.port, raw_message(0, "same@id"), raw_message(1, "same@id"))
    with SmtpSink(tmp_path) as sink:
        send(sink.port, raw_message(2, "same@id"))
    files = eml_files(tmp_path)
    assert [f.name[:8] for f in files] == ["00000001", "00000002", "00000003"]
    assert [f.read_bytes() for f in files] == [raw_message(n, "same@id") for n in range(3)]


def test_count_and_flush_account_for_every_accepted_message(tmp_path: Path) -> None:
    with SmtpSink(tmp_path) as sink:
        send(sink.port, *(raw_message(n, f"m{n}@t") for n in range(50)))
        sink.flush()
        assert sink.count == 50
        assert len(eml_files(tmp_path)) == 50
        assert sink.failed == 0


def test_a_file_that_already_exists_is_kept_and_the_message_counted_as_failed(
    tmp_path: Path,
) -> None:
    with SmtpSink(tmp_path) as sink:
        # Another writer takes the name the sink is about to use.
        (tmp_path / "00000001-m@t.eml").write_bytes(b"someone else's")
        send(sink.port, raw_message(0, "m@t"))
        sink.flush()
        assert sink.failed == 1
    assert (tmp_path / "00000001-m@t.eml").read_bytes() == b"someone else's"


def test_eight_bit_content_and_utf8_addresses_are_accepted(tmp_path: Path) -> None:
    raw = "Subject: Grüße\r\nMessage-ID: <u@t>\r\n\r\nGrüße aus Köln\r\n".encode()
    with (
        SmtpSink(tmp_path) as sink,
        smtplib.SMTP("127.0.0.1", sink.port, local_hostname="t.example", timeout=5) as client,
    ):
        client.sendmail("news@example.com", ["jürgen@exämple.de"], raw, ["SMTPUTF8"])
    assert (tmp_path / "00000001-u@t.eml").read_bytes() == raw


def test_two_sinks_run_side_by_side_on_ports_of_their_own(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "a") as first, SmtpSink(tmp_path / "b") as second:
        assert first.port != second.port
        send(second.port, raw_message(0, "b@t"))
        send(first.port, raw_message(0, "a@t"))
    assert [f.name for f in eml_files(tmp_path / "a")] == ["00000001-a@t.eml"]
    assert [f.name for f in eml_files(tmp_path / "b")] == ["00000001-b@t.eml"]


def test_a_port_in_use_is_reported_as_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sink = SmtpSink(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ConfigurationError, match=r"cannot listen on 127\.0\.0\.1"):
            sink.start()


def test_stop_closes_the_port_and_start_serves_again(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    sink.start()
    port = sink.port
    sink.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(ConfigurationError, match="not running"):
        _ = sink.port
    sink.start()
    try:
        send(sink.port, raw_message(0, "again@t"))
    finally:
        sink.stop()
    assert [f.name for f in eml_files(tmp_path)] == ["00000001-again@t.eml"]


@pytest.mark.parametrize(
    "path",
    [
        "<a@b.example>",
        "<a.b+tag@sub.b.example> SIZE=1018 BODY=8BITMIME",
        "<jürgen@exämple.de>  SMTPUTF8",
        "<>",
        '<"quoted local"@b.example>',
        "<a@[192.0.2.1]>",
        "<@relay.example:a@b.example>",
        "a@b.example",
    ],
)
def test_the_fast_address_path_parses_like_aiosmtpd(path: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        fast = _SinkSession(object(), hostname="sink", loop=loop)
        reference = SMTP(object(), hostname="sink", loop=loop)
        assert fast._getaddr(path) == reference._getaddr(path)
    finally:
        loop.close()
