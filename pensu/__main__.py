"""`python -m pensu` is the `pensu` command."""

import sys

from pensu.cli import main

sys.exit(main())
