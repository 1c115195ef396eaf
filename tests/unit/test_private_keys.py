"""Private keys are checked to parse when credentials hold them: the keys
ssh-keygen makes (OpenSSH, PEM, PKCS#8) are accepted, and what SSH could not
log in with (an encrypted key, a key cut short or damaged, a public key,
anything else) is refused on `private_key`, saying why."""

from __future__ import annotations

import base64
import re
from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.ssh_library import asyncssh
from migration_core.private_keys import check_private_key

from ..ssh_keys import keygen, keys_directory
from .support import field_errors

# (ssh-keygen's arguments, the kind the check names), one key of each.
MADE = {
    "ed25519": (["-t", "ed25519"], "OpenSSH ssh-ed25519"),
    "rsa": (["-t", "rsa", "-b", "2048"], "OpenSSH ssh-rsa"),
    "ecdsa": (["-t", "ecdsa"], "OpenSSH ecdsa-sha2-nistp256"),
    "ecdsa-521": (["-t", "ecdsa", "-b", "521"], "OpenSSH ecdsa-sha2-nistp521"),
    "rsa-pem": (["-t", "rsa", "-b", "2048", "-m", "PEM"], "PEM RSA PRIVATE KEY"),
    "ecdsa-pem": (["-t", "ecdsa", "-m", "PEM"], "PEM EC PRIVATE KEY"),
    "dsa-pem": (["-t", "dsa", "-m", "PEM"], "PEM DSA PRIVATE KEY"),
    "rsa-pkcs8": (["-t", "rsa", "-b", "2048", "-m", "PKCS8"], "PEM PRIVATE KEY"),
    "ecdsa-pkcs8": (["-t", "ecdsa", "-m", "PKCS8"], "PEM PRIVATE KEY"),
}
ENCRYPTED = {
    "openssh": ["-t", "ed25519"],
    "pem": ["-t", "rsa", "-b", "2048", "-m", "PEM"],
    "pkcs8": ["-t", "rsa", "-b", "2048", "-m", "PKCS8"],
}
ARMOUR = re.compile(r"(-----BEGIN [A-Z ]+-----\n)(.*)(\n-----END [A-Z ]+-----)", re.DOTALL)


def made(name: str) -> str:
    return keygen(name, *MADE[name][0])


@cache
def ed25519_pkcs8() -> str:
    """An Ed25519 key in PKCS#8, which ssh-keygen does not write."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def refusal(text: str) -> str:
    with pytest.raises(core.InvalidInput) as refused:
        check_private_key(text)
    assert field_errors(refused.value) == {"private_key"}
    return " ".join(refused.value.errors["private_key"])


# A DSA key still works, and cryptography says it is deprecated as asyncssh reads it: expected here.
@pytest.mark.filterwarnings("ignore:DSA is deprecated")
@pytest.mark.parametrize("name", MADE)
def test_the_keys_ssh_keygen_makes_are_accepted_and_are_keys_ssh_can_use(name: str) -> None:
    text = made(name)
    assert check_private_key(text) == MADE[name][1]
    asyncssh.import_private_key(text)  # the SSH driver reads what the check accepted


def test_a_pkcs8_ed25519_key_is_accepted() -> None:
    text = ed25519_pkcs8()
    assert check_private_key(text) == "PEM PRIVATE KEY"
    asyncssh.import_private_key(text)


@pytest.mark.parametrize("name", ["ed25519", "rsa-pem"])
def test_line_endings_and_surrounding_blank_space_do_not_matter(name: str) -> None:
    text = made(name)
    assert check_private_key("\n  " + text.replace("\n", "\r\n") + "\n\n") == MADE[name][1]


@pytest.mark.parametrize("form", ENCRYPTED)
def test_a_key_with_a_passphrase_is_refused_saying_it_must_be_unencrypted(form: str) -> None:
    text = keygen(f"encrypted-{form}", *ENCRYPTED[form], passphrase="a pass phrase")
    assert "unencrypted" in refusal(text)


def test_a_public_key_is_refused_as_one() -> None:
    made("ed25519")
    public = (keys_directory() / "ed25519.pub").read_text()
    assert "public key" in refusal(public)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hunter2",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----",
        # An empty SEQUENCE: DER, but no key in it.
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----",
    ],
)
def test_what_is_no_private_key_is_refused(text: str) -> None:
    refusal(text)


def test_a_key_whose_begin_and_end_differ_is_refused() -> None:
    text = made("rsa-pem").replace("END RSA", "END EC")
    assert "ends as" in refusal(text)


def test_two_keys_in_one_text_are_refused() -> None:
    refusal(made("ed25519") + made("ecdsa"))


@given(st.text(max_size=300))
def test_any_text_is_a_key_or_refused_on_private_key_and_nothing_else(text: str) -> None:
    try:
        check_private_key(text)
    except core.InvalidInput as refused:
        assert field_errors(refused) == {"private_key"}


ALL = [*MADE, "ed25519-pkcs8"]


def key_text(name: str) -> str:
    return ed25519_pkcs8() if name == "ed25519-pkcs8" else made(name)


@given(st.sampled_from(ALL), st.data())
def test_every_prefix_of_a_key_is_refused(name: str, data: st.DataObject) -> None:
    text = key_text(name).strip()
    cut = data.draw(st.integers(0, len(text) - 1))
    refusal(text[:cut])


def _body(text: str) -> tuple[str, bytes, str]:
    match = ARMOUR.search(text)
    assert match is not None
    return match[1], base64.b64decode("".join(match[2].split())), match[3]


def _armoured(begin: str, body: bytes, end: str) -> str:
    encoded = base64.b64encode(body).decode()
    return begin + "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64)) + end


@given(st.sampled_from(ALL), st.data())
def test_a_key_whose_body_is_cut_short_is_refused(name: str, data: st.DataObject) -> None:
    begin, body, end = _body(key_text(name))
    cut = data.draw(st.integers(0, len(body) - 1))
    refusal(_armoured(begin, body[:cut], end))


@given(st.sampled_from(ALL), st.binary(min_size=1, max_size=16))
def test_a_key_with_bytes_after_its_end_is_refused(name: str, junk: bytes) -> None:
    begin, body, end = _body(key_text(name))
    refusal(_armoured(begin, body + junk, end))


@pytest.mark.parametrize("name", ALL)
def test_the_re_armoured_body_of_a_key_is_still_the_key(name: str) -> None:
    """The two properties above change only the body: unchanged, it passes."""
    begin, body, end = _body(key_text(name))
    check_private_key(_armoured(begin, body, end))


# --- credentials ---------------------------------------------------------------


def test_credentials_log_in_with_a_key_a_password_or_both() -> None:
    key = made("ed25519")
    with_key = core.Credentials(1, "deploy", "", private_key=key)
    assert with_key.has_private_key and with_key.password == ""
    assert with_key.login == core.Login("deploy", "", "")
    both = core.Credentials(1, "deploy", "s3cret", private_key=key)
    assert both.has_private_key
    assert not core.Credentials(1, "deploy", "s3cret").has_private_key


def test_credentials_need_a_password_or_a_key() -> None:
    with pytest.raises(core.InvalidInput) as refused:
        core.Credentials(1, "deploy", "")
    assert field_errors(refused.value) == {"password"}


def test_credentials_refuse_a_key_that_does_not_parse() -> None:
    with pytest.raises(core.InvalidInput) as refused:
        core.Credentials(1, "deploy", "s3cret", private_key="not a key")
    assert field_errors(refused.value) == {"private_key"}


def test_neither_the_password_nor_the_key_is_in_a_repr() -> None:
    key = made("rsa-pem")
    credentials = core.Credentials(1, "deploy", "hunter2-secret", private_key=key)
    shown = repr(credentials)
    assert "hunter2-secret" not in shown
    assert _body(key)[0].strip() not in shown and "PRIVATE KEY" not in shown
