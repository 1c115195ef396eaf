"""Adapters: implementations of the core's ports (storage, hashing, tokens, runners)."""
