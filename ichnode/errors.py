"""Exceptions that carry a message meant for the user (one line, no traceback)."""

from __future__ import annotations


class IchnodeError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero."""


class ConfigError(IchnodeError):
    """A setting is missing or invalid."""


class ImagingError(IchnodeError):
    """A dataset cannot be turned into model input (no pixels, undecodable, not CT...)."""


class NotDicomError(ImagingError):
    """The file is not DICOM at all (neither a preamble nor a "DICM" prefix)."""


class CheckpointError(IchnodeError):
    """A checkpoint cannot be loaded: wrong format, unknown architecture, wrong labels."""


class DeviceError(IchnodeError):
    """The requested compute device is not present."""
