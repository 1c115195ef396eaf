"""Encryption of secrets at rest: AES-256-GCM from `cryptography`, with the key
derived from the service secret by HKDF-SHA256.

A sealed value is `version (1 byte) | nonce (12 bytes) | ciphertext and tag`.
Each value is bound to what it is (`context`, passed as associated data), so a
ciphertext copied into another column does not decrypt there. The version byte
leaves room to change the scheme later without guessing at old values."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12
_KEY_INFO = b"migration-service: secrets at rest, AES-256-GCM, v1"


class SecretError(Exception):
    """A sealed value that does not open: a different secret key, or damaged data."""


class SecretBox:
    def __init__(self, secret_key: bytes) -> None:
        if not secret_key:
            raise ValueError("The secret key is empty.")
        # A fixed salt: the derived key must be the same on every start.
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"migration-service", info=_KEY_INFO
        ).derive(secret_key)
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), context)

    def open(self, sealed: bytes, context: bytes) -> str:
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise SecretError("The stored secret is in an unknown format.")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, context)
        except InvalidTag:
            raise SecretError(
                "A stored secret does not decrypt: the secret key differs from the one"
                " it was written with, or the data is damaged."
            ) from None
        return plaintext.decode("utf-8")

    def seal_text(self, plaintext: str, context: bytes) -> str:
        """`seal` as ASCII, for secrets kept inside a JSON document."""
        return base64.b64encode(self.seal(plaintext, context)).decode("ascii")

    def open_text(self, sealed: str, context: bytes) -> str:
        try:
            raw = base64.b64decode(sealed.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise SecretError("The stored secret is in an unknown format.") from None
        return self.open(raw, context)
