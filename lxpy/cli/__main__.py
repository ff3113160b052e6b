"""`python -m lxpy.cli`: the `lxpy` command."""

import sys

from lxpy.cli import main

sys.exit(main())
