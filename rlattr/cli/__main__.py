"""``python -m rlattr.cli``."""

import sys

from rlattr.cli.main import main

sys.exit(main())
