"""Methods: one file each. Importing this package registers them all."""

from . import anogan, bigan, deep_sad, deep_svdd, doc, fcdd, hsc, patchcore  # noqa: F401
