"""Private keys checked to parse, with the standard library alone: an OpenSSH
key (`openssh-key-v1`, the format of ssh-keygen) or a PEM one (PKCS#1 RSA,
SEC 1 EC, DSA, PKCS#8), unencrypted. The container is read to its end, so a
key cut short, padded with junk or encrypted with a passphrase is refused
when it is stored, not when the service first logs in with it.

This checks the form, not the mathematics: a key whose numbers do not belong
together still parses, and the machine's login refuses it."""

from __future__ import annotations

import base64
import binascii
import re

from .errors import InvalidInput

FIELD = "private_key"

_ARMOUR = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n(?P<body>.*?)\r?\n?-----END (?P<end>[A-Z0-9 ]+)-----", re.DOTALL
)
_OPENSSH = "OPENSSH PRIVATE KEY"
_PEM_LABELS = {"RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY", "PRIVATE KEY"}
_MAGIC = b"openssh-key-v1\x00"
_UNENCRYPTED_BLOCK = 8  # the padding unit of the private section when the cipher is "none"
_UNENCRYPTED = (
    "The private key is encrypted with a passphrase; the key must be unencrypted"
    " (remove the passphrase, e.g. ssh-keygen -p -N '' -f KEY)."
)

# What follows the key type in an OpenSSH private section, key by key (the
# comment comes after these): "s" a string, "m" an mpint, "b" a byte.
_OPENSSH_FIELDS = {
    "ssh-ed25519": "ss",
    "ssh-ed448": "ss",
    "ssh-rsa": "mmmmmm",
    "ssh-dss": "mmmmm",
    "ecdsa-sha2-nistp256": "ssm",
    "ecdsa-sha2-nistp384": "ssm",
    "ecdsa-sha2-nistp521": "ssm",
    "sk-ssh-ed25519@openssh.com": "ssbss",
    "sk-ecdsa-sha2-nistp256@openssh.com": "sssbss",
}
# The lengths of an Edwards key's public and private parts.
_EDWARDS = {"ssh-ed25519": (32, 64), "ssh-ed448": (57, 114)}

# DER tags.
_INTEGER, _OCTET_STRING, _SEQUENCE = 0x02, 0x04, 0x30


class _Malformed(Exception):
    pass


def check_private_key(text: str) -> str:
    """What kind of key `text` is (e.g. "OpenSSH ssh-ed25519", "PEM RSA
    PRIVATE KEY"), or InvalidInput on `private_key` saying why it is none."""
    try:
        return _check(text)
    except _Malformed as bad:
        raise InvalidInput.field(FIELD, str(bad)) from None


def _check(text: str) -> str:
    stripped = text.strip()
    armour = _ARMOUR.fullmatch(stripped)
    if armour is None:
        if re.match(r"(ssh|ecdsa|sk)-\S+ [A-Za-z0-9+/=]+", stripped):
            raise _Malformed("This is a public key: give the private key (the file without .pub).")
        if "-----BEGIN" not in stripped:
            raise _Malformed(
                "Not a private key: give an OpenSSH key (-----BEGIN OPENSSH PRIVATE KEY-----)"
                " or a PEM one (-----BEGIN RSA PRIVATE KEY-----, EC, DSA or PKCS#8)."
            )
        raise _Malformed(
            "The private key is not one whole -----BEGIN ...----- to -----END ...----- block:"
            " it is cut short, or has text around it."
        )
    label, end = armour["label"], armour["end"]
    if label != end:
        raise _Malformed(f"The private key begins as {label!r} but ends as {end!r}.")
    if label == "ENCRYPTED PRIVATE KEY":
        raise _Malformed(_UNENCRYPTED)
    if label == _OPENSSH:
        return "OpenSSH " + _openssh(_base64(armour["body"]))
    if label in _PEM_LABELS:
        headers, body = _pem_headers(armour["body"])
        if "ENCRYPTED" in headers.get("Proc-Type", "") or "DEK-Info" in headers:
            raise _Malformed(_UNENCRYPTED)
        _der(label, _base64(body))
        return f"PEM {label}"
    raise _Malformed(
        f"{label!r} is not a private key this service reads: give an OpenSSH key or a PEM"
        " RSA, EC, DSA or PKCS#8 private key."
    )


def _base64(body: str) -> bytes:
    compact = "".join(body.split())
    if not compact:
        raise _Malformed("The private key is empty between its BEGIN and END lines.")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("The private key's body is not valid base64: it is damaged or cut short.") from None


def _pem_headers(body: str) -> tuple[dict[str, str], str]:
    """RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`), then the base64 body."""
    lines = body.splitlines()
    headers: dict[str, str] = {}
    while lines and ":" in lines[0]:
        name, _, value = lines.pop(0).partition(":")
        headers[name.strip()] = value.strip()
    return headers, "\n".join(lines)


# --- OpenSSH ----------------------------------------------------------------------


class _Wire:
    """The SSH wire encoding (RFC 4251): uint32, strings, mpints."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.at, self.what = data, 0, what

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise _Malformed(f"The private key is cut short in its {self.what}.")
        part = self.data[self.at : self.at + count]
        self.at += count
        return part

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed(f"The private key's {self.what} holds a name that is not text.") from None

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.at)


def _openssh(data: bytes) -> str:
    if not data.startswith(_MAGIC):
        raise _Malformed("The OpenSSH private key does not start as one (openssh-key-v1): it is damaged.")
    outer = _Wire(data[len(_MAGIC) :], "header")
    cipher, kdf, kdf_options = outer.text(), outer.text(), outer.string()
    if cipher != "none" or kdf != "none":
        raise _Malformed(_UNENCRYPTED)
    if kdf_options:
        raise _Malformed("The OpenSSH private key has key derivation options but no cipher: it is damaged.")
    count = outer.uint32()
    if count != 1:
        raise _Malformed(f"The OpenSSH private key file holds {count} keys; give exactly one.")
    public = _Wire(outer.string(), "public key")
    public_type = public.text()
    private = outer.string()
    if outer.at != len(outer.data):
        raise _Malformed("The OpenSSH private key has data after its end: it is damaged.")
    if len(private) % _UNENCRYPTED_BLOCK:
        raise _Malformed("The OpenSSH private key's private part has a wrong length: it is damaged or cut short.")
    section = _Wire(private, "private part")
    if section.uint32() != section.uint32():
        raise _Malformed("The OpenSSH private key's check numbers differ: it is damaged (or was encrypted).")
    key_type = section.text()
    fields = _OPENSSH_FIELDS.get(key_type)
    if fields is None:
        raise _Malformed(f"The OpenSSH private key is of a type this service does not know: {key_type!r}.")
    if key_type != public_type:
        raise _Malformed(f"The OpenSSH private key is {key_type!r} but its public key is {public_type!r}.")
    values = [section.take(1) if kind == "b" else section.string() for kind in fields]
    section.string()  # the comment
    if key_type in _EDWARDS:
        public_length, private_length = _EDWARDS[key_type]
        public_key, private_key = values[0], values[1]
        if (len(public_key), len(private_key)) != (public_length, private_length):
            raise _Malformed(f"The OpenSSH {key_type} key has parts of the wrong length: it is damaged.")
        if private_key[public_length:] != public_key:
            raise _Malformed(f"The OpenSSH {key_type} key's private part does not hold its public key: it is damaged.")
    padding = section.rest()
    if padding != bytes(range(1, len(padding) + 1)) or len(padding) >= _UNENCRYPTED_BLOCK:
        raise _Malformed("The OpenSSH private key's padding is wrong: it is damaged.")
    return key_type


# --- PEM (DER inside) ---------------------------------------------------------------


def _tlv(data: bytes, at: int, limit: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `at`,
    which must end by `limit`."""
    if at + 2 > limit:
        raise _Malformed("The private key is cut short.")
    tag, first = data[at], data[at + 1]
    start = at + 2
    if first < 0x80:
        length = first
    else:
        width = first & 0x7F
        if width == 0 or width > 4 or start + width > limit:
            raise _Malformed("The private key has a length it cannot have: it is damaged or cut short.")
        length = int.from_bytes(data[start : start + width], "big")
        start += width
    end = start + length
    if end > limit:
        raise _Malformed("The private key is cut short.")
    return tag, start, end


def _elements(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The DER elements that fill data[start:end] exactly."""
    found = []
    at = start
    while at < end:
        element = _tlv(data, at, end)
        found.append(element)
        at = element[2]
    return found


# The tags a key's SEQUENCE starts with, by PEM label: PKCS#1 RSA (version and
# eight numbers), DSA (version and five numbers), SEC 1 EC (version 1 and the
# private number), PKCS#8 (version, algorithm, the key as an octet string).
_DER_START = {
    "RSA PRIVATE KEY": (_INTEGER,) * 9,
    "DSA PRIVATE KEY": (_INTEGER,) * 6,
    "EC PRIVATE KEY": (_INTEGER, _OCTET_STRING),
    "PRIVATE KEY": (_INTEGER, _SEQUENCE, _OCTET_STRING),
}


def _der(label: str, data: bytes) -> None:
    tag, start, end = _tlv(data, 0, len(data))
    if tag != _SEQUENCE:
        raise _Malformed(f"The {label} is not a DER SEQUENCE: it is damaged.")
    if end != len(data):
        raise _Malformed(f"The {label} has data after its end: it is damaged.")
    tags = tuple(element[0] for element in _elements(data, start, end))
    expected = _DER_START[label]
    if tags[: len(expected)] != expected:
        raise _Malformed(f"The {label} does not hold what such a key holds: it is damaged.")
