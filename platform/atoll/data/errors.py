"""Errors of the data stages. Messages name the file / field and the fix."""
from __future__ import annotations


class DataError(RuntimeError):
    """Bad or unreadable input data (a source file, a shard, a spec mismatch)."""


class CorruptShard(DataError):
    """A shard whose bytes do not match its manifest or do not parse as a tar of samples."""
