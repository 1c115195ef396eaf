"""Entrypoints: the aiohttp REST service and the command line."""

import functools

DISTRIBUTION = "migration-service"


@functools.cache
def package_version() -> str:
    """The installed package's version, set once in pyproject.toml: the command
    line, the OpenAPI document and the API index all show this one. Read when
    first asked: importlib.metadata is a tenth of a second of every start."""
    from importlib.metadata import version

    return version(DISTRIBUTION)
