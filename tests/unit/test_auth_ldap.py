"""authldap without a server: authldaprc keys, filters (RFC 4515 escaping), entries."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from courier_authd.authldap import (
    emailmap_filter,
    entry_to_account,
    load_ldap_config,
    user_filter,
    wanted_attributes,
)
from courier_authd.authrc import parse_authrc, read_authrc

from libcourier.config import ConfigError

DEFAULTS = Path(__file__).resolve().parents[2] / "libcourier" / "control" / "defaults"
BASE = ("LDAP_URI ldap://127.0.0.1:389/\nLDAP_BASEDN dc=example,dc=com\n"
        "LDAP_CRYPTPW userPassword\nLDAP_UID uidNumber\nLDAP_GID gidNumber\n")


def cfg(extra: str = "", base: str = BASE):
    return load_ldap_config(parse_authrc(base + extra, "authldaprc"))


def test_shipped_file_loads():
    c = load_ldap_config(read_authrc(DEFAULTS / "authldaprc"))
    assert c.uris == ("ldap://localhost",) and c.basedn == "dc=example,dc=com"
    assert (c.mail, c.homedir, c.cryptpw, c.clearpw) == \
        ("mail", "homeDirectory", "userPassword", "clearPassword")
    assert c.initbind and not c.authbind and c.deref == "never" and c.timeout == 5


def test_uri_list_and_defaults():
    c = cfg(base=BASE.replace("ldap://127.0.0.1:389/", "ldap://a.example, ldaps://b.example"))
    assert c.uris == ("ldap://a.example", "ldaps://b.example")
    assert c.version == 3 and c.mail == "mail"


@pytest.mark.parametrize("extra, key", [
    ("LDAP_DEREF sometimes\n", "LDAP_DEREF"),
    ("LDAP_TIMEOUT soon\n", "LDAP_TIMEOUT"),
    ("LDAP_AUTHBIND yes\n", "LDAP_AUTHBIND"),
    ("LDAP_FILTER objectClass=x\n", "LDAP_FILTER"),
    ("LDAP_AUXOPTIONS disableimap\n", "LDAP_AUXOPTIONS"),
    ("LDAP_GLOB_UID no-such-user-here\n", "LDAP_GLOB_UID"),
    ("LDAP_EMAILMAP (uid=@user@)\n", "LDAP_EMAILMAP"),
])
def test_bad_values_have_file_and_line(extra, key):
    with pytest.raises(ConfigError) as e:
        cfg(extra)
    assert e.value.path == "authldaprc" and e.value.line == 6 and key in str(e.value)


def test_ids_and_password_attribute_needed():
    with pytest.raises(ConfigError, match="LDAP_GLOB_UID"):
        cfg(base="LDAP_BASEDN dc=x\nLDAP_CRYPTPW userPassword\n")
    with pytest.raises(ConfigError, match="LDAP_CRYPTPW or LDAP_CLEARPW"):
        cfg(base="LDAP_BASEDN dc=x\nLDAP_GLOB_UID 1\nLDAP_GLOB_GID 1\n")
    c = cfg(base="LDAP_BASEDN dc=x\nLDAP_GLOB_UID 1\nLDAP_GLOB_GID 1\nLDAP_AUTHBIND 1\n")
    assert c.authbind and "userPassword" not in wanted_attributes(c)
    with pytest.raises(ConfigError, match="ldapi"):
        cfg(base=BASE.replace("ldap://127.0.0.1:389/", "ldapi:///"))


def test_glob_ids_by_name():
    me = pwd.getpwuid(os.getuid()).pw_name
    c = cfg(f"LDAP_GLOB_UID {me}\nLDAP_GLOB_GID 12\n")
    assert (c.glob_uid, c.glob_gid) == (os.getuid(), 12)


def test_filter_escapes_the_login():
    c = cfg("LDAP_FILTER (objectClass=CourierMailAccount)\n")
    assert user_filter(c, "mail", "a@b") == "(&(objectClass=CourierMailAccount)(mail=a@b))"
    # RFC 4515 §3: * ( ) \ NUL become \2a \28 \29 \5c \00.
    evil = user_filter(cfg(), "mail", "*)(uid=*))(|(mail=*\\\0")
    assert evil == "(mail=\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28mail=\\2a\\5c\\00)"
    c = cfg("LDAP_EMAILMAP (&(uid=@user@)(ou=@realm@))\nLDAP_EMAILMAP_ATTRIBUTE handle\n")
    assert emailmap_filter(c, "jo*", "ex(ample)") == "(&(uid=jo\\2a)(ou=ex\\28ample\\29))"


def raw(**attrs: str) -> dict[str, list[bytes]]:
    return {k.lower(): [v.encode()] for k, v in attrs.items()}


def test_entry_to_account():
    c = cfg("LDAP_MAILDIR mailbox\nLDAP_MAILDIRQUOTA quota\nLDAP_FULLNAME cn\n"
            "LDAP_CLEARPW clearPassword\nLDAP_AUXOPTIONS disableimap=disableimap,shared=sharedgroup\n"
            "LDAP_DEFAULTDELIVERY defaultDelivery\nLDAP_HOMEDIR homeDirectory\n")
    a = entry_to_account(c, "a@x", raw(mail="a@x", uidNumber="10", gidNumber="20",
                                       homeDirectory="/h", mailbox="/h/Md", quota="5S",
                                       cn="Alice", userPassword="{SSHA}abc",
                                       clearPassword="pw", disableimap="1",
                                       defaultDelivery="| prog"))
    assert (a.address, a.uid, a.gid, a.home, a.maildir, a.quota, a.fullname) == \
        ("a@x", 10, 20, "/h", "/h/Md", "5S", "Alice")
    assert a.options == "disableimap=1,defaultdelivery=| prog"
    assert a.passwords == {"systempw": "{SSHA}abc", "clearpw": "pw"}


def test_glob_ids_mailroot_and_bad_entries():
    c = cfg("LDAP_GLOB_UID 5\nLDAP_GLOB_GID 6\nLDAP_MAILROOT /var/mail\n",
            base="LDAP_BASEDN dc=x\nLDAP_CRYPTPW userPassword\nLDAP_UID uidNumber\n")
    a = entry_to_account(c, "a", raw(homeDirectory="a/home"))
    assert (a.uid, a.gid, a.home) == (5, 6, "/var/mail/a/home")
    # The entry's own uidNumber wins over LDAP_GLOB_UID.
    assert entry_to_account(c, "a", raw(homeDirectory="/h", uidNumber="7")).uid == 7
    assert entry_to_account(c, "a", raw(homeDirectory="/h", uidNumber="x")) is None
    assert entry_to_account(cfg(), "a", raw(uidNumber="1", gidNumber="1")) is None  # no home
    assert entry_to_account(cfg(), "a", raw(homeDirectory="/h", gidNumber="1")) is None  # no uid


def test_tls_settings_env_then_ldap_conf(tmp_path):
    import ssl

    from courier_authd.authldap import tls_settings
    conf = tmp_path / "ldap.conf"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf.write_text(f"# comment\nTLS_CACERT {ca}\nTLS_REQCERT allow\n")
    assert tls_settings({}, conf) == (str(ca), ssl.CERT_NONE)
    assert tls_settings({"LDAPTLS_REQCERT": "demand"}, conf) == (str(ca), ssl.CERT_REQUIRED)
    assert tls_settings({}, tmp_path / "none") == (None, ssl.CERT_REQUIRED)
    with pytest.raises(ConfigError, match="REQCERT"):
        tls_settings({"LDAPTLS_REQCERT": "maybe"}, conf)
    with pytest.raises(ConfigError, match="does not exist"):
        tls_settings({"LDAPTLS_CACERT": str(tmp_path / "missing.pem")}, conf)
