"""`python -m e2urec` (and `accelerate launch -m e2urec`) runs the CLI."""

import sys

from e2urec.cli import main

sys.exit(main())
