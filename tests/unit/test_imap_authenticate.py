"""IMAP AUTHENTICATE (RFC 3501 §6.2.2) and SASL-IR (RFC 4959) through the real prelogin driver
over a socketpair; authd replaced by a function."""

from __future__ import annotations

import base64
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from courier_imapd import login
from courier_imapd.config import capability_line, load_config, sasl_mechanisms
from courier_imapd.core import ImapConnection, parse_command
from courier_imapd.core import State as ImapState

import libcourier.control
from libcourier.sasl import LoginCredentials

CAPS = 'IMAP_CAPABILITY="IMAP4rev1 AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=SCRAM-SHA-1 SASL-IR"\n'


class Pair:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_ip, self.peer_port, self.tls = "127.0.0.1", 4242, False

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        return self.sock.recv(n)

    def starttls(self, ctx) -> None:
        raise OSError("no TLS here")


def b64(s: bytes) -> bytes:
    return base64.b64encode(s)


def run(tmp_path: Path, script: bytes, rc: str = CAPS, *, bytewise: bool = False
        ) -> tuple[bytes, object]:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "imapd").write_text("PORT=143\n" + rc)
    cfg, _ = load_config(etc, "imapd")
    a, b = socket.socketpair()
    result: list[object] = []
    seen: list[object] = []

    def verify(creds, ip):
        seen.append(creds)
        if isinstance(creds, LoginCredentials) and (creds.user, creds.password) == ("alice", "pw"):
            return SimpleNamespace(options={})
        return None

    def server() -> None:
        ok = login.prelogin(Pair(b), ImapConnection(), cfg, lambda u, p, i: None, None,
                            login.Counters(), sleep=lambda s: None, sasl_authenticate=verify)
        result.append(ok)
        if ok:
            b.sendall(f"{ok.tag} OK LOGIN Ok.\r\n".encode())
        b.close()

    t = threading.Thread(target=server)
    t.start()
    if bytewise:
        for i in range(len(script)):
            a.sendall(script[i:i + 1])
    else:
        a.sendall(script)
    a.shutdown(socket.SHUT_WR)
    a.settimeout(10)
    out = bytearray()
    while chunk := a.recv(65536):
        out += chunk
    t.join(10)
    a.close()
    return bytes(out), result[0]


def test_capability_filters_auth_words(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "imapd").write_text("PORT=143\n" + CAPS)
    cfg, _ = load_config(etc, "imapd")
    # CRAM-MD5: authd cannot verify it; SCRAM: not implemented.
    assert capability_line(cfg, False) == \
        "IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR ID ENABLE UTF8=ACCEPT"
    assert sasl_mechanisms(cfg, False) == ("PLAIN", "LOGIN")


def test_shipped_default_offers_plain_only_over_tls(tmp_path: Path) -> None:
    src = Path(libcourier.control.__file__).parent / "defaults" / "imapd"
    etc = tmp_path / "etc"
    etc.mkdir()
    text = src.read_text().replace("/etc/courier/imapd.pem", str(tmp_path / "none.pem"))
    (etc / "imapd").write_text(text)
    cfg, _ = load_config(etc, "imapd")
    assert "AUTH=" not in capability_line(cfg, False)
    assert "AUTH=PLAIN" in capability_line(cfg, True).split()
    assert "SASL-IR" in capability_line(cfg, True).split()


def test_authenticate_plain_with_challenge(tmp_path: Path) -> None:
    out, ok = run(tmp_path, b"a AUTHENTICATE PLAIN\r\n" + b64(b"\0alice\0pw") + b"\r\n")
    assert out.split(b"\r\n")[1] == b"+ "
    assert out.endswith(b"a OK LOGIN Ok.\r\n")
    assert ok.user == "alice"


@pytest.mark.parametrize("split", [False, True])
def test_authenticate_sasl_ir_pipelined_or_bytewise(tmp_path: Path, split: bool) -> None:
    script = b"a AUTHENTICATE PLAIN " + b64(b"\0alice\0bad") + b"\r\n" \
        b"b AUTHENTICATE PLAIN " + b64(b"\0alice\0pw") + b"\r\n"
    out, ok = run(tmp_path, script, bytewise=split)
    assert b"+ " not in out
    assert b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n" in out
    assert out.endswith(b"b OK LOGIN Ok.\r\n")


def test_authenticate_login(tmp_path: Path) -> None:
    out, ok = run(tmp_path, b"a authenticate login\r\n" + b64(b"alice") + b"\r\n"
                  + b64(b"pw") + b"\r\n")
    lines = out.split(b"\r\n")
    assert lines[1] == b"+ " + b64(b"Username:") and lines[2] == b"+ " + b64(b"Password:")
    assert ok.user == "alice"


def test_cancel_bad_base64_and_unknown(tmp_path: Path) -> None:
    out, ok = run(tmp_path, b"a AUTHENTICATE PLAIN\r\n*\r\n"
                  b"b AUTHENTICATE PLAIN\r\n!!!\r\n"
                  b"c AUTHENTICATE CRAM-MD5\r\n"
                  b"d AUTHENTICATE GSSAPI\r\n"
                  b"e AUTHENTICATE PLAIN AGEAYg\r\n"
                  b"f AUTHENTICATE PLAIN " + b64(b"bob\0alice\0pw") + b"\r\n"
                  b"g AUTHENTICATE PLAIN =\r\n" + b64(b"\0alice\0pw") + b"\r\n")
    assert b"a BAD authentication cancelled\r\n" in out
    assert b"b BAD response is not valid base64\r\n" in out
    assert b"c NO Unsupported authentication mechanism\r\n" in out
    assert b"d NO Unsupported authentication mechanism\r\n" in out
    assert b"e BAD initial response is not valid base64\r\n" in out
    assert b"f BAD authorization identity differs" in out
    # "=" is an empty initial response: PLAIN then has nothing, so it fails.
    assert b"g BAD PLAIN message" in out
    assert ok is None


def test_overlong_response_cancels_and_session_goes_on(tmp_path: Path) -> None:
    out, ok = run(tmp_path, b"a AUTHENTICATE PLAIN\r\n" + b"A" * 9000 + b"\r\n"
                  b"b LOGOUT\r\n")
    assert b"a BAD Authentication response too long\r\n" in out
    assert b"b OK LOGOUT completed\r\n" in out


def test_client_gone_mid_exchange(tmp_path: Path) -> None:
    out, ok = run(tmp_path, b"a AUTHENTICATE LOGIN\r\n" + b64(b"alice") + b"\r\n")
    assert ok is None and out.endswith(b"+ " + b64(b"Password:") + b"\r\n")


def test_parser_keeps_initial_response() -> None:
    cmd = parse_command([(b"t AUTHENTICATE plain AGEAYg==", None)], ImapState.NOT_AUTHENTICATED)
    assert (cmd.mechanism, cmd.initial_response) == ("PLAIN", b"AGEAYg==")
