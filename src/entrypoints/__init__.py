"""Entrypoints: the aiohttp REST service and the command line."""
