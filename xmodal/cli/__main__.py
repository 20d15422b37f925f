"""``python -m xmodal.cli``."""

import sys

from xmodal.cli.main import main

sys.exit(main())
