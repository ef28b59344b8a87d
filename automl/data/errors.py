"""Errors raised by the data loaders."""


class DatasetError(RuntimeError):
    """A dataset is missing or corrupt; the message says which file and how to get it."""
