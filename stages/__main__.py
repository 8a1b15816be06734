"""``python -m stages`` is the same as the ``lum`` command."""

import sys

from stages.cli.app import main

sys.exit(main())
