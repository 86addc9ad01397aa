# SPDX-License-Identifier: Apache-2.0
"""``python -m npusim``: the ``npusim`` command."""

import sys

from npusim.runtime.cli import main

sys.exit(main())
