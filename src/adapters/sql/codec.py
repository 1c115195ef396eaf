"""Entities to column values and back, through cattrs: enums as their values,
datetimes as ISO 8601 UTC text, and every password sealed with the secret key,
which the database remembers so that another key is refused."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import cattrs

from migration_core import CloudType, Login, MigrationState, Mode, OperatingSystem, Phase

from ..secrets import SecretBox, SecretError


class _Executes(Protocol):
    """A session's one method the key check needs (`session.Session`)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Any: ...


R = TypeVar("R")

_LOGIN_PASSWORD = b"login.password"
_KEY_CHECK = b"settings.key_check"
_KEY_CHECK_TEXT = "the secret key this database was written with"


def iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Storage keeps timezone-aware datetimes only.")
    return moment.astimezone(timezone.utc).isoformat()


def _enum_value(member: enum.Enum) -> Any:
    return member.value


class Codec:
    """cattrs at the storage edge: entities to column values and back. Enums are
    stored as their values, datetimes as ISO 8601 UTC text, a target VM as JSON
    whose login password is sealed."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        converter = cattrs.Converter()
        # str-based enums would otherwise pass through as enum members.
        for kind in (CloudType, MigrationState, Mode, OperatingSystem, Phase):
            converter.register_unstructure_hook(kind, _enum_value)
        converter.register_unstructure_hook(datetime, iso_utc)
        converter.register_structure_hook(datetime, lambda text, _: datetime.fromisoformat(text))
        converter.register_unstructure_hook(Login, self._seal_login)
        converter.register_structure_hook(Login, self._open_login)
        self.converter = converter

    def _seal_login(self, login: Login) -> dict[str, str]:
        return {
            "username": login.username,
            "sealed_password": self.box.seal_text(login.password, _LOGIN_PASSWORD),
            "domain": login.domain,
        }

    def _open_login(self, value: Any, _type: Any) -> Login:
        password = self.box.open_text(value["sealed_password"], _LOGIN_PASSWORD)
        return Login(value["username"], password, value["domain"])

    def row(self, entity: Any) -> dict[str, Any]:
        values: dict[str, Any] = self.converter.unstructure(entity)
        return values

    def entity(self, values: dict[str, Any], kind: type[R]) -> R:
        return self.converter.structure(values, kind)

    def check_key(self, session: _Executes, where: str) -> None:
        """Remember a sealed sentence on first use; later, refuse a key that
        cannot open it: such a key could not read a stored password."""
        row = session.execute("SELECT value FROM settings WHERE name = 'key_check'").fetchone()
        if row is None:
            session.execute(
                "INSERT INTO settings (name, value) VALUES ('key_check', ?)",
                [self.box.seal(_KEY_CHECK_TEXT, _KEY_CHECK)],
            )
            return
        try:
            self.box.open(bytes(row[0]), _KEY_CHECK)
        except SecretError:
            raise SecretError(
                f"{where} was written with another secret key; its encrypted"
                " credentials cannot be read with this one."
            ) from None
