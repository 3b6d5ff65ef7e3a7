"""Courier's own LIST options (ACL MYRIGHTS POSTADDRESS) through a real imapd: the data after
each name as Courier-IMAP 5.0.13's imapd writes it (imapd's list_callback), for our folders,
a \\Noselect parent and the legacy shared namespace; and the same lines from Courier's
imapd on a copy of the Maildir where its binary is unpacked."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess

import pytest
from courier_deliver import maildirmake

from tests.integration.test_imapd import IO_TIMEOUT, PASSWORD, USER
from tests.integration.test_maildir_courier import COURIER_IMAPD, TIMEOUT, needs_courier

LIST = b'LIST (ACL MYRIGHTS POSTADDRESS) "" "*"'
LINE = re.compile(rb'^(?:\* LIST )?\(([^)]*)\) "\." ("[^"]*"|\S+)(.*)$')   # imaplib drops "* LIST "


@pytest.fixture
def inst(new_instance):
    with open(new_instance.etc / "imapd", "a") as f:
        f.write("\nIMAP_SPECIALUSE_CREATE=0\n")
    new_instance.adduser(USER, PASSWORD)
    md = new_instance.maildir(USER)
    assert maildirmake.main(["-f", "Sub.Deep", str(md)]) == 0    # INBOX.Sub: a parent only
    sh = new_instance.root / "mail" / "Maildir-shared"
    assert maildirmake.main(["-S", str(sh)]) == 0
    assert maildirmake.main(["-s", "write", "-f", "Weekly", str(sh)]) == 0
    assert maildirmake.main(["--add", f"notices={sh}", str(md)]) == 0
    owner = os.stat(md)         # what we made as root goes to the Maildir's owner
    for top, dirs, files in os.walk(md):
        for n in [*dirs, *files]:
            os.chown(os.path.join(top, n), owner.st_uid, owner.st_gid)
    new_instance.start("authdaemond", "imapd")
    return new_instance


def suffixes(lines: list[bytes]) -> dict[str, bytes]:
    out = {}
    for ln in lines:
        m = LINE.match(ln.rstrip(b"\r\n"))
        if m:
            out[m.group(2).strip(b'"').decode()] = m.group(3)
    return out


def test_list_acl_myrights_postaddress(inst) -> None:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.setacl("INBOX", "bob", "lr")[0] == "OK"
        typ, data = c._simple_command("LIST", "(ACL MYRIGHTS POSTADDRESS)", '""', '"*"')
        assert typ == "OK", data
        got = suffixes(c.untagged_responses.pop("LIST"))
        # The state of an unopened shared folder is not changed by listing it.
        assert not (inst.maildir(USER) / "shared-folders").exists()
        assert c.list('""', "*")[0] == "OK"      # plain LIST: no data after names
        assert all(not ln.endswith(b")") or ln.count(b"(") == 1 for ln in c.list()[1])
    except Exception:
        print(inst.logs())
        raise
    finally:
        c.logout()
    # Courier-IMAP 5.0.13's lines for the same Maildir (recorded with its binary).
    assert got["INBOX"] == (b' (("ACL" (("owner" "acdilrsw")("administrators" "acdilrsw")'
                            b'("user=bob" "lr")))("MYRIGHTS" "acdilrsw")(POSTADDRESS NIL))')
    assert got["INBOX.Sub.Deep"] == got["INBOX"]          # the ACL is inherited
    assert got["shared"] == b' (("MYRIGHTS" "l")(POSTADDRESS NIL))'
    assert got["shared.notices"] == got["shared"]
    assert got["shared.notices.Weekly"] == b' (("MYRIGHTS" "lrsw")(POSTADDRESS NIL))'
    inst.ours_list = got


@needs_courier
def test_same_as_courier(inst, tmp_path) -> None:
    test_list_acl_myrights_postaddress(inst)
    md = tmp_path / "Maildir"
    shutil.copytree(inst.maildir(USER), md)      # ours: Courier wants its own uid's Maildir
    env = {"AUTHENTICATED": "test", "HOME": str(tmp_path), "IMAP_ACL": "1",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(COURIER_IMAPD), str(md)], input=b"a " + LIST + b"\r\nz LOGOUT\r\n",
                       capture_output=True, env=env, timeout=TIMEOUT, check=False)
    theirs = suffixes(r.stdout.split(b"\n"))
    assert theirs == inst.ours_list
