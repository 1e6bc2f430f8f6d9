"""`python -m reverie.cli`: the `reverie` command, for subprocesses that must use this interpreter."""

import sys

from . import main

sys.exit(main())
