"""Methods: one file each. Importing this package registers them all."""

from . import anogan, bigan, deep_svdd, fcdd, patchcore  # noqa: F401
