"""``python -m pytest_unlearn {audit,compare} ...``: see :mod:`pytest_unlearn.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
