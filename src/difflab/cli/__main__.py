"""`python -m difflab.cli ...`: the `difflab` command."""

import sys

from . import main

sys.exit(main())
