"""``python -m oneclass ...``: the same as the ``oneclass`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
