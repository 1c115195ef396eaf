"""`python -m entrypoints serve` does what `migration-api serve` does."""

import sys

from entrypoints.command import main

sys.exit(main())
