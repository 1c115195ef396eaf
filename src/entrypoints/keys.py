"""The secret key: given in the settings, or generated once and kept beside
an SQLite database; and the separate keys derived from it for each job."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from adapters.jwt_tokens import MIN_KEY_BYTES

from .settings import SECRET_KEY_FILE, BadSetting, Settings, label


def load_or_create_secret_key(path: Path) -> bytes:
    """The key kept in `path`, created on first use: random, mode 0600, and
    published with a hard link so two processes starting at once share one key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process won the race: use its key
        finally:
            draft.unlink(missing_ok=True)
    key = path.read_text(encoding="utf-8").strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise BadSetting(
            f"{label('secret_key')}: the key in {path} is shorter than {MIN_KEY_BYTES} bytes"
        )
    return key


def master_key(settings: Settings) -> bytes:
    """The configured key; else the one kept beside the SQLite database; else
    (`memory://` keeps nothing across a restart) a fresh one for this process."""
    if settings.secret_key is not None:
        return settings.secret_key.encode("utf-8")
    database = settings.database_path
    if database is None:
        return secrets.token_bytes(32)
    try:
        return load_or_create_secret_key(database.parent / SECRET_KEY_FILE)
    except OSError as error:
        raise BadSetting(
            f"{label('secret_key')}: cannot keep the key beside the database: {error}"
        ) from None


def subkey(master: bytes, purpose: str) -> bytes:
    """Separate keys for separate jobs, derived from the one configured secret."""
    return hmac.new(master, purpose.encode("ascii"), hashlib.sha256).digest()
