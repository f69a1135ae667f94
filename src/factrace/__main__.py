"""``python -m factrace``: the ``factrace`` command."""

import sys

from factrace.cli import main

sys.exit(main())
