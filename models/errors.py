"""Errors raised for bad user input. Each message names the file, row, field or value at fault."""

from __future__ import annotations


class GlasszooError(Exception):
    """Base class of every error glasszoo raises on purpose."""


class DataError(GlasszooError, ValueError):
    """A data file, manifest row or array is missing, malformed or inconsistent."""


class ConfigError(GlasszooError, ValueError):
    """A configuration file or value is invalid."""
