"""`python -m autointerp`, which is also how torchrun starts each rank: `torchrun ... -m autointerp gather ...`."""

import sys

from autointerp.cli import main

sys.exit(main())
