"""Methods: one file each. Importing this package registers them all."""

from . import deep_sad, deep_svdd, fcdd, hsc  # noqa: F401
