"""The users and the failed logins kept to slow down password guessing."""

from __future__ import annotations

import attrs

from migration_core import User

from .. import refusals
from .errors import ConstraintViolation
from .session import Session
from .tables import KINDS


class Users:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, user: User) -> User:
        try:
            with self._session.savepoint():
                new_id = self._session.insert(
                    "INSERT INTO users (username, password_hash) VALUES (?, ?)",
                    [user.username, user.password_hash],
                )
        except ConstraintViolation:
            raise refusals.username_taken(user.username) from None
        return attrs.evolve(user, id=new_id)

    def get(self, user_id: int) -> User:
        row = self._session.execute(
            "SELECT username, password_hash, id FROM users WHERE id = ?", [user_id]
        ).fetchone()
        if row is None:
            raise refusals.not_found("users", user_id)
        return User(*row)

    def by_username(self, username: str) -> User | None:
        row = self._session.execute(
            "SELECT username, password_hash, id FROM users WHERE username = ?", [username]
        ).fetchone()
        return None if row is None else User(*row)

    def delete(self, user_id: int) -> None:
        self.get(user_id)
        try:
            with self._session.savepoint():
                self._session.execute("DELETE FROM users WHERE id = ?", [user_id])
        except ConstraintViolation:
            owned = [
                kind.table
                for kind in KINDS
                if self._session.execute(
                    f"SELECT 1 FROM {kind.table} WHERE owner_id = ? LIMIT 1", [user_id]
                ).fetchone()
            ]
            raise refusals.still_owns(user_id, owned) from None


class LoginFailures:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, username: str, at: float) -> None:
        self._session.execute(
            "INSERT INTO login_failures (username, failed_at) VALUES (?, ?)", [username, at]
        )

    def since(self, username: str, moment: float) -> list[float]:
        rows = self._session.execute(
            "SELECT failed_at FROM login_failures WHERE username = ? AND failed_at > ?"
            " ORDER BY failed_at",
            [username, moment],
        )
        return [float(row[0]) for row in rows]

    def forget(self, before: float) -> None:
        self._session.execute("DELETE FROM login_failures WHERE failed_at <= ?", [before])
