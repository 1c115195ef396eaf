"""asyncssh, imported without printing its dependencies' deprecations.

asyncssh still names DSA keys, which cryptography deprecates: importing it
warns five times, about code nobody running this service can change. Such a
deprecation is logged once, at debug level; any other warning of the import
goes on as warnings do. Every module of the SSH driver imports asyncssh from
here, and imports it at its first machine (a tenth of a second)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from migration_core.machines import MachineUnreachable

log = logging.getLogger("adapters.ssh")


def _is_deprecation(category: type[Warning]) -> bool:
    return issubclass(category, DeprecationWarning | PendingDeprecationWarning) or "Deprecation" in category.__name__


@contextlib.contextmanager
def deprecations_at_debug(what: str, logger: logging.Logger = log) -> Iterator[None]:
    """Within: each distinct deprecation warning is one debug line of `logger`
    naming `what`; other warnings are issued again, as they came."""
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message) for w in raised if _is_deprecation(w.category)):
        logger.debug("%s: %s", what, message)
    for warning in raised:
        if not _is_deprecation(warning.category):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


with deprecations_at_debug("asyncssh's import"):
    import asyncssh


def private_key(text: str) -> asyncssh.SSHKey:
    """The credentials' private key, or MachineUnreachable saying why it cannot be used."""
    try:
        return asyncssh.import_private_key(text)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise MachineUnreachable(f"The credentials' private key cannot be used: {error}.") from None


__all__ = ["asyncssh", "deprecations_at_debug", "private_key"]
