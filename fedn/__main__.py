"""``python -m fedn`` is the ``fedn`` command."""

import sys

from fedn.cli import main

sys.exit(main())
