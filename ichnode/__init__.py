"""ichnode: a DICOM node that triages head CT for intracranial hemorrhage."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ichnode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
