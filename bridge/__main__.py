"""`python -m bridge` is the same as the `iotbridge` console script."""

import sys

from bridge.cli import main

sys.exit(main())
