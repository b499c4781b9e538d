"""The one exception type that stage commands turn into a clean error message and exit code."""


class SegpipeError(Exception):
    """Bad input or configuration: the message says what, where (file, key, label) and how to fix it."""
