"""Entrypoints: the aiohttp REST service and the command line."""

from importlib.metadata import version

DISTRIBUTION = "migration-service"


def package_version() -> str:
    """The installed package's version, set once in pyproject.toml: the command
    line, the OpenAPI document and the API index all show this one."""
    return version(DISTRIBUTION)
