"""libcourier.idn: the one IDN-to-A-label conversion (smtp client, esmtphelo, esmtproutes)."""

from __future__ import annotations

import pytest

from libcourier.idn import IdnError, address_to_ascii, to_ascii


def test_ascii_names_are_returned_unchanged() -> None:
    for name in ("example.com", "EXAMPLE.com", "[192.0.2.1]", ".example.com", "", "*"):
        assert to_ascii(name) is name


def test_unicode_labels_become_a_labels() -> None:
    assert to_ascii("bücher.example") == "xn--bcher-kva.example"
    assert to_ascii("例え.テスト") == "xn--r8jz45g.xn--zckzah"
    # IDNA 2003 (libidn's idna_to_ascii) maps a U-label's case and the fullwidth
    # dot; an ASCII label stays as it is.
    assert to_ascii("Bücher．Example") == "xn--bcher-kva.Example"


def test_leading_dot_kept_only_for_a_suffix() -> None:
    assert to_ascii(".bücher.example", suffix=True) == ".xn--bcher-kva.example"
    with pytest.raises(IdnError, match="not a valid international domain name"):
        to_ascii(".bücher.example")        # an empty first label


@pytest.mark.parametrize("bad", ["bücher..example", "ü" * 64 + ".example", "a\u200fü.example"])
def test_invalid_labels_are_a_clear_error(bad: str) -> None:
    with pytest.raises(IdnError) as e:
        to_ascii(bad)
    assert isinstance(e.value, ValueError)
    assert "not a valid international domain name" in str(e.value)


def test_address_converts_the_domain_only() -> None:
    assert address_to_ascii("jörg@bücher.example") == "jörg@xn--bcher-kva.example"
    assert address_to_ascii("a@b@bücher.example") == "a@b@xn--bcher-kva.example"
    assert address_to_ascii("postmaster") == "postmaster"
    assert address_to_ascii("user@example.com") == "user@example.com"
    with pytest.raises(IdnError):
        address_to_ascii("user@bücher..example")


def test_the_codec_is_loaded_at_import() -> None:
    # A daemon imports this before dropping privileges; str.encode("idna") must
    # then find its codec without reading the Python installation.
    import sys

    import libcourier.idn  # noqa: F401
    assert "encodings.idna" in sys.modules
