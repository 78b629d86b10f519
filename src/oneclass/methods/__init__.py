"""Methods: one file each. Importing this package registers them all."""

from . import deep_svdd, doc, fcdd  # noqa: F401
