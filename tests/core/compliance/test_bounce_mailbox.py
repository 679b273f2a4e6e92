"""Reading returned mail from a real maildir and a real (loopback) IMAP server."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from imap_test_server import MailStore, running_imap_server

from postwise.compliance.bounces import BounceKind, classify_message
from postwise.compliance.mailbox import ImapSource, MaildirSource, open_mailbox
from postwise.errors import ConfigurationError

CORPUS = Path(__file__).parent / "fixtures" / "bounces"
HARD = (CORPUS / "postfix-user-unknown.eml").read_bytes()
SOFT = (CORPUS / "postfix-mailbox-full.eml").read_bytes()
BLOCK = (CORPUS / "postfix-spamhaus-block.eml").read_bytes()


def make_maildir(path: Path, *messages: bytes) -> list[str]:
    box = mailbox.Maildir(path, create=True)
    keys = [box.add(raw) for raw in messages]
    box.close()
    return keys


# --- maildir -------------------------------------------------------------------------------


def test_maildir_yields_unseen_messages_byte_for_byte(tmp_path: Path) -> None:
    make_maildir(tmp_path / "bounces", HARD, SOFT)
    with MaildirSource(tmp_path / "bounces") as source:
        read = [m.raw for m in source.messages()]
    assert sorted(read) == sorted([HARD, SOFT])
    assert [classify_message(raw).kind for raw in read].count(BounceKind.HARD) == 1


def test_maildir_message_stays_unseen_until_acknowledged(tmp_path: Path) -> None:
    make_maildir(tmp_path / "bounces", HARD, SOFT)
    source = MaildirSource(tmp_path / "bounces")
    first, _second = list(source.messages())
    first.acknowledge()
    remaining = list(MaildirSource(tmp_path / "bounces").messages())
    assert [m.source_id for m in remaining] == [_second.source_id]
    # The acknowledged message is in cur/ with the Seen flag, its bytes unchanged.
    seen = list((tmp_path / "bounces" / "cur").iterdir())
    assert len(seen) == 1 and seen[0].name.endswith(":2,S")
    assert seen[0].read_bytes() == first.raw


def test_maildir_skips_messages_another_client_already_flagged_seen(tmp_path: Path) -> None:
    make_maildir(tmp_path / "bounces", HARD)
    box = mailbox.Maildir(tmp_path / "bounces")
    message = mailbox.MaildirMessage(BLOCK)
    message.set_subdir("cur")
    message.add_flag("S")
    box.add(message)
    unread = mailbox.MaildirMessage(SOFT)
    unread.set_subdir("cur")
    unread.add_flag("F")
    box.add(unread)
    raws = [m.raw for m in MaildirSource(tmp_path / "bounces").messages()]
    assert len(raws) == 2
    assert all(b"spamhaus" not in raw for raw in raws)


def test_maildir_acknowledge_keeps_existing_flags_and_is_idempotent(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    flagged = mailbox.MaildirMessage(SOFT)
    flagged.set_subdir("cur")
    flagged.add_flag("F")
    box.add(flagged)
    (only,) = MaildirSource(tmp_path / "bounces").messages()
    only.acknowledge()
    only.acknowledge()
    (name,) = [p.name for p in (tmp_path / "bounces" / "cur").iterdir()]
    assert name.endswith(":2,FS")


def test_maildir_acknowledge_can_move_to_another_maildir(tmp_path: Path) -> None:
    make_maildir(tmp_path / "bounces", HARD)
    source = MaildirSource(tmp_path / "bounces", move_to=tmp_path / "processed")
    (message,) = source.messages()
    message.acknowledge()
    assert list(MaildirSource(tmp_path / "bounces").messages()) == []
    moved = mailbox.Maildir(tmp_path / "processed")
    assert [moved.get_bytes(k) for k in moved.iterkeys()] == [HARD]


def test_a_folder_that_is_not_a_maildir_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a maildir"):
        MaildirSource(tmp_path)


def test_open_mailbox_reads_a_maildir_path(tmp_path: Path) -> None:
    make_maildir(tmp_path / "bounces", BLOCK)
    source = open_mailbox(str(tmp_path / "bounces"))
    assert isinstance(source, MaildirSource)
    assert [m.raw for m in source.messages()] == [BLOCK]


# --- IMAP ----------------------------------------------------------------------------------


def seeded_store(capabilities: tuple[str, ...] = ("IMAP4rev1", "MOVE", "UIDPLUS")) -> MailStore:
    store = MailStore(username="bounces", password="s3cret pass", capabilities=capabilities)
    store.folders["Processed"] = []
    store.add("INBOX", HARD)
    store.add("INBOX", BLOCK, flags={"\\Seen"})
    store.add("INBOX", SOFT)
    return store


def imap_source(port: int, move_to: str | None = None) -> ImapSource:
    return ImapSource(
        "127.0.0.1",
        port=port,
        username="bounces",
        password="s3cret pass",
        use_ssl=False,
        timeout=5,
        move_to=move_to,
    )


def test_imap_fetches_unseen_messages_without_marking_them_seen() -> None:
    store = seeded_store()
    with running_imap_server(store) as (_, port), imap_source(port) as source:
        raws = [m.raw for m in source.fetch_unseen()]
    assert raws == [HARD, SOFT]
    assert all("\\Seen" not in m.flags for m in store.folders["INBOX"] if m.raw != BLOCK)


def test_imap_acknowledge_marks_only_that_message_seen() -> None:
    store = seeded_store()
    with running_imap_server(store) as (_, port):
        with imap_source(port) as source:
            first, _ = list(source.fetch_unseen())
            first.acknowledge()
        with imap_source(port) as source:
            again = [m.raw for m in source.fetch_unseen()]
    assert again == [SOFT]
    flags = {m.uid: m.flags for m in store.folders["INBOX"]}
    assert "\\Seen" in flags[int(first.source_id.rsplit("/", 1)[1])]


@pytest.mark.parametrize(
    "capabilities",
    [("IMAP4rev1", "MOVE", "UIDPLUS"), ("IMAP4rev1", "UIDPLUS"), ("IMAP4rev1",)],
    ids=["uid-move", "copy-uid-expunge", "copy-expunge"],
)
def test_imap_acknowledge_moves_the_message_when_asked(capabilities: tuple[str, ...]) -> None:
    store = seeded_store(capabilities)
    with running_imap_server(store) as (_, port), imap_source(port, move_to="Processed") as source:
        for message in source.fetch_unseen():
            if message.raw == HARD:
                message.acknowledge()
    assert [m.raw for m in store.folders["Processed"]] == [HARD]
    assert [m.raw for m in store.folders["INBOX"]] == [BLOCK, SOFT]


def test_imap_move_to_a_missing_folder_fails_loudly_and_keeps_the_message() -> None:
    store = seeded_store(("IMAP4rev1",))
    with running_imap_server(store) as (_, port), imap_source(port, move_to="Nowhere") as source:
        first = next(iter(source.fetch_unseen()))
        with pytest.raises(ConfigurationError, match="Nowhere"):
            first.acknowledge()
    assert len(store.folders["INBOX"]) == 3


def test_imap_wrong_password_is_a_configuration_error() -> None:
    store = seeded_store()
    with running_imap_server(store) as (_, port), pytest.raises(ConfigurationError, match="login"):
        ImapSource("127.0.0.1", port=port, username="bounces", password="wrong", use_ssl=False)


def test_imap_unreachable_server_is_a_configuration_error() -> None:
    store = seeded_store()
    with running_imap_server(store) as (_, port):
        pass  # the port is free again once the server has stopped
    with pytest.raises(ConfigurationError, match="could not connect"):
        ImapSource("127.0.0.1", port=port, username="u", password="p", use_ssl=False, timeout=2)


def test_open_mailbox_reads_an_imap_url_with_its_folder_and_password() -> None:
    store = seeded_store()
    store.folders["Bounces"] = []
    store.add("Bounces", SOFT)
    with running_imap_server(store) as (_, port):
        source = open_mailbox(f"imap://bounces:s3cret%20pass@127.0.0.1:{port}/Bounces")
        assert isinstance(source, ImapSource)
        with source:
            assert [m.raw for m in source.messages()] == [SOFT]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no bounce mailbox"),
        ("pop3://u@host/INBOX", "neither a maildir"),
        ("imaps://host/INBOX", "neither a maildir"),
        ("imaps://user@host/INBOX", "no password"),
    ],
)
def test_open_mailbox_rejects_specs_it_cannot_use(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_mailbox(spec)
