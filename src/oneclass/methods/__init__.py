"""Methods: one file each. Importing this package registers them all."""

from . import anogan, bigan, deep_svdd, doc, fcdd, patchcore  # noqa: F401
