"""authldap against a real OpenLDAP slapd (mdb, a test tree loaded with slapadd)
started by the test setup: the module, authdaemond, and an instance's IMAP login."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
from collections.abc import Iterator

import ldap3
import pytest
from authservers import ADMIN_DN, ADMIN_PW, BASEDN, Server, free_port, start_slapd
from courier_authd.authldap import LdapModule, load_ldap_config
from courier_authd.authrc import parse_authrc
from courier_authd.modules import BackendTempFail
from courier_authd.passwords import hash_password
from test_authd import Daemon

from libcourier.authclient import (
    AuthTempFail,
    auth_enumerate,
    auth_login,
    auth_passwd,
    auth_pre,
)

CRYPT_USER, CRYPT_PW = "crypt@example.com", "crypt-secret"
SSHA_USER, SSHA_PW = "ssha@example.com", "ssha-secret"
CLEAR_USER, CLEAR_PW = "clear@example.com", "clear-secret"
SALT = b"\x01\x02\x03\x04"


def ssha(pw: str) -> str:
    return "{SSHA}" + base64.b64encode(hashlib.sha1(pw.encode() + SALT).digest() + SALT).decode()


def person(uid: str, mail: str, extra: str) -> str:
    return (f"dn: uid={uid},ou=people,{BASEDN}\nobjectClass: inetOrgPerson\n"
            f"objectClass: CourierMailAccount\nuid: {uid}\ncn: {uid.title()} User\nsn: User\n"
            f"mail: {mail}\nhomeDirectory: /home/{uid}\n{extra.strip()}\n\n")


TREE = (
    f"dn: {BASEDN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n"
    f"dn: ou=people,{BASEDN}\nobjectClass: organizationalUnit\nou: people\n\n"
    f"dn: ou=emailmap,{BASEDN}\nobjectClass: organizationalUnit\nou: emailmap\n\n"
    + person("crypt", CRYPT_USER, "uidNumber: 1000\ngidNumber: 1000\nquota: 100S\n"
             f"userPassword: {{CRYPT}}{hash_password(CRYPT_PW)}\ndisableimap: 0\n"
             "employeeNumber: cc223344")
    + person("ssha", SSHA_USER, f"uidNumber: 1001\ngidNumber: 1001\nuserPassword: {ssha(SSHA_PW)}")
    + person("clear", CLEAR_USER, f"uidNumber: 1002\ngidNumber: 1002\nclearPassword: {CLEAR_PW}")
    # LDAP_EMAILMAP: john@alias.example -> handle cc223344 -> the crypt user's entry.
    + f"dn: uid=john,ou=emailmap,{BASEDN}\nobjectClass: inetOrgPerson\nuid: john\n"
      "cn: john\nsn: map\nou: alias.example\nemployeeNumber: cc223344\n\n"
)


@pytest.fixture(scope="session")
def slapd() -> Iterator[Server]:
    srv = start_slapd(TREE)
    try:
        yield srv
    finally:
        srv.stop()


def rc_text(port: int, extra: str = "") -> str:
    return (f"LDAP_URI ldap://127.0.0.1:{port}/\nLDAP_BASEDN {BASEDN}\n"
            f"LDAP_BINDDN {ADMIN_DN}\nLDAP_BINDPW {ADMIN_PW}\nLDAP_TIMEOUT 5\n"
            "LDAP_MAIL mail\nLDAP_FILTER (objectClass=CourierMailAccount)\n"
            "LDAP_HOMEDIR homeDirectory\nLDAP_MAILDIR mailbox\nLDAP_MAILDIRQUOTA quota\n"
            "LDAP_FULLNAME cn\nLDAP_CLEARPW clearPassword\nLDAP_CRYPTPW userPassword\n"
            "LDAP_UID uidNumber\nLDAP_GID gidNumber\nLDAP_AUXOPTIONS disableimap=disableimap\n"
            + extra)


def module(port: int, extra: str = "") -> LdapModule:
    return LdapModule(load_ldap_config(parse_authrc(rc_text(port, extra), "authldaprc")))


def admin(srv: Server) -> ldap3.Connection:
    return ldap3.Connection(ldap3.Server("127.0.0.1", port=srv.port, get_info=ldap3.NONE),
                            ADMIN_DN, ADMIN_PW, auto_bind=True, receive_timeout=10)


def set_password(srv: Server, uid: str, value: str) -> None:
    c = admin(srv)
    assert c.modify(f"uid={uid},ou=people,{BASEDN}",
                    {"userPassword": [(ldap3.MODIFY_REPLACE, [value])]}), c.result
    c.unbind()


def test_login_crypt_ssha_clear(slapd):
    m = module(slapd.port)
    a = m.authenticate(CRYPT_USER, CRYPT_PW)
    assert a is not None and (a.address, a.uid, a.home, a.quota, a.fullname, a.options) == \
        (CRYPT_USER, 1000, "/home/crypt", "100S", "Crypt User", "disableimap=0")
    assert m.authenticate(CRYPT_USER, "wrong") is None
    assert m.authenticate(SSHA_USER, SSHA_PW).uid == 1001
    assert m.authenticate(SSHA_USER, SSHA_PW + "x") is None
    assert m.authenticate(CLEAR_USER, CLEAR_PW).uid == 1002
    assert m.authenticate(CLEAR_USER, "") is None
    assert m.authenticate("nobody@example.com", CLEAR_PW) is None


def test_filter_injection_finds_nobody(slapd):
    m = module(slapd.port)
    for evil in ("*", "*@example.com", "crypt@example.com)(mail=*", "x)(|(mail=*)",
                 "crypt@example.com\\2a", "\0"):
        assert m.lookup(evil) is None
        assert m.authenticate(evil, CRYPT_PW) is None


def test_domain_and_emailmap(slapd):
    assert module(slapd.port, "LDAP_DOMAIN example.com\n").authenticate("crypt", CRYPT_PW)
    m = module(slapd.port, "LDAP_EMAILMAP (&(uid=@user@)(ou=@realm@))\n"
                           "LDAP_EMAILMAP_BASEDN ou=emailmap,dc=example,dc=com\n"
                           "LDAP_EMAILMAP_ATTRIBUTE employeeNumber\n"
                           "LDAP_EMAILMAP_MAIL employeeNumber\n")
    a = m.authenticate("john@alias.example", CRYPT_PW)
    assert a is not None and a.uid == 1000
    assert m.authenticate("john@other.example", CRYPT_PW) is None
    assert m.authenticate("j*@alias.example", CRYPT_PW) is None


def test_authbind_checks_by_binding(slapd):
    # No password attribute is read; slapd checks the {SSHA} value itself.
    m = module(slapd.port, "LDAP_AUTHBIND 1\n")
    assert "userPassword" not in m.sasl_mechanisms() and m.sasl_mechanisms() == {"PLAIN", "LOGIN"}
    assert m.authenticate(SSHA_USER, SSHA_PW).uid == 1001
    assert m.authenticate(SSHA_USER, "wrong") is None
    assert m.authenticate(SSHA_USER, "") is None   # would be an anonymous bind
    assert m.authenticate(CLEAR_USER, CLEAR_PW) is None   # no userPassword to bind with
    assert m.lookup(SSHA_USER).passwords == {}


def test_anonymous_search_with_initbind_0(slapd):
    m = module(slapd.port, "LDAP_INITBIND 0\nLDAP_AUTHBIND 1\n")
    assert m.authenticate(SSHA_USER, SSHA_PW) is not None


def test_enumerate(slapd):
    names = sorted(a.address for a in module(slapd.port).enumerate())
    assert names == sorted([CRYPT_USER, SSHA_USER, CLEAR_USER])
    m = module(slapd.port, "LDAP_ENUMERATE_FILTER (uidNumber=1001)\n")
    assert [a.address for a in m.enumerate()] == [SSHA_USER]


def test_passwd_as_admin_and_with_authbind(slapd):
    m = module(slapd.port)
    try:
        assert m.passwd(CRYPT_USER, "wrong", "new-crypt") is False
        assert m.passwd("nobody@example.com", "x", "y") is None
        assert m.passwd(CRYPT_USER, CRYPT_PW, "new-crypt") is True
        assert m.authenticate(CRYPT_USER, "new-crypt") is not None
        assert m.authenticate(CRYPT_USER, CRYPT_PW) is None
        # LDAP_AUTHBIND: the change is made bound as the user, with the old password.
        b = module(slapd.port, "LDAP_AUTHBIND 1\n")
        assert b.passwd(SSHA_USER, "wrong", "new-ssha") is False
        assert b.passwd(SSHA_USER, SSHA_PW, "new-ssha") is True
        assert b.authenticate(SSHA_USER, "new-ssha") is not None
        assert b.authenticate(SSHA_USER, SSHA_PW) is None
    finally:
        set_password(slapd, "crypt", "{CRYPT}" + hash_password(CRYPT_PW))
        set_password(slapd, "ssha", ssha(SSHA_PW))


def test_down_is_temporary_and_reconnect_after_restart(tmp_path):
    assert pytest.raises(BackendTempFail, module(free_port()).authenticate, CRYPT_USER, CRYPT_PW)
    srv = start_slapd(TREE)
    try:
        m = module(srv.port)
        assert m.authenticate(CRYPT_USER, CRYPT_PW) is not None
        first = m._conn
        srv.pause()
        with pytest.raises(BackendTempFail):
            m.authenticate(CRYPT_USER, CRYPT_PW)
        srv.restart()
        assert m.authenticate(CRYPT_USER, CRYPT_PW) is not None
        assert m._conn is not first
        # authbind's own bind on a stopped server is a temporary failure too.
        b = module(srv.port, "LDAP_AUTHBIND 1\n")
        assert b.lookup(SSHA_USER) is not None
        srv.pause()
        with pytest.raises(BackendTempFail):
            b.authenticate(SSHA_USER, SSHA_PW)
    finally:
        srv.stop()


# -- authdaemond and an instance -----------------------------------------------------------

def write_etc(tmp, text: str):
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text('authmodulelist="authldap"\ndaemons=2\n'
                                      "authdaemonvar=../var/run/authdaemon\n")
    (etc / "authldaprc").write_text(text)
    os.chmod(etc / "authldaprc", 0o600)
    return etc


def test_authd_with_ldap(slapd, tmp_path):
    d = Daemon(write_etc(tmp_path, rc_text(slapd.port)))
    try:
        info = auth_login(d.sock, "imap", CRYPT_USER, CRYPT_PW)
        assert info is not None and info.home == "/home/crypt" and info.quota == "100S"
        assert auth_login(d.sock, "imap", CRYPT_USER, "wrong") is None
        assert auth_pre(d.sock, "courier", CLEAR_USER).uid == 1002
        assert sorted(e[0] for e in auth_enumerate(d.sock)) == \
            sorted([CRYPT_USER, SSHA_USER, CLEAR_USER])
        try:
            assert auth_passwd(d.sock, "imap", SSHA_USER, SSHA_PW, "via-authd")
            assert auth_login(d.sock, "imap", SSHA_USER, "via-authd") is not None
        finally:
            set_password(slapd, "ssha", ssha(SSHA_PW))
    finally:
        d.stop()


def test_authd_ldap_down_is_temporary(tmp_path):
    d = Daemon(write_etc(tmp_path, rc_text(free_port())))
    try:
        for _ in range(3):
            with pytest.raises(AuthTempFail):
                auth_login(d.sock, "imap", CRYPT_USER, CRYPT_PW)
    finally:
        d.stop()


def test_imap_login_from_ldap(slapd, new_instance):
    inst = new_instance
    user, pw = "carol@example.org", "carol-ldap-secret"
    inst.adduser(user, "userdb-secret")
    md = inst.maildir(user)
    st = md.stat()
    c = admin(slapd)
    dn = f"uid=carol,ou=people,{BASEDN}"
    assert c.add(dn, ["inetOrgPerson", "CourierMailAccount"],
                 {"uid": "carol", "cn": "Carol", "sn": "C", "mail": user,
                  "homeDirectory": str(md.parent), "uidNumber": str(st.st_uid),
                  "gidNumber": str(st.st_gid), "userPassword": ssha(pw)}), c.result
    try:
        rc = inst.etc / "authdaemonrc"
        rc.write_text(rc.read_text().replace('authmodulelist="authuserdb"',
                                             'authmodulelist="authldap"'))
        (inst.etc / "authldaprc").write_text(rc_text(slapd.port, "LDAP_AUTHBIND 1\n"))
        inst.start("authdaemond", "imapd")
        with imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30) as im:
            with pytest.raises(imaplib.IMAP4.error):
                im.login(user, "userdb-secret")
        with imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30) as im:
            im.login(user, pw)
            assert im.select("INBOX")[0] == "OK"
            im.logout()
    finally:
        c.delete(dn)
        c.unbind()


def test_starttls_verified(monkeypatch):
    srv = start_slapd(TREE, tls=True)
    try:
        monkeypatch.setenv("LDAPTLS_CACERT", srv.extra["cacert"])
        monkeypatch.delenv("LDAPTLS_REQCERT", raising=False)
        m = module(srv.port, "LDAP_TLS 1\n")
        assert m.authenticate(CRYPT_USER, CRYPT_PW) is not None
        assert m._conn.tls_started
        b = module(srv.port, "LDAP_TLS 1\nLDAP_AUTHBIND 1\n")
        assert b.authenticate(SSHA_USER, SSHA_PW) is not None
        # A certificate the CA file does not vouch for: no login, and no plain-text fallback.
        other = "/etc/ssl/certs/ca-certificates.crt"
        if os.path.exists(other):
            monkeypatch.setenv("LDAPTLS_CACERT", other)
            with pytest.raises(BackendTempFail):
                module(srv.port, "LDAP_TLS 1\n").authenticate(CRYPT_USER, CRYPT_PW)
            # TLS_REQCERT never (ldap.conf(5)) accepts it, as libldap would.
            monkeypatch.setenv("LDAPTLS_REQCERT", "never")
            assert module(srv.port, "LDAP_TLS 1\n").authenticate(CRYPT_USER, CRYPT_PW)
    finally:
        srv.stop()
