"""``python -m thawline`` is the ``thawline`` command; torchrun starts it as ``-m thawline``."""

import sys

from thawline.cli import main

sys.exit(main())
