"""``python -m dpft.finetune ...`` is the ``dpft`` command (what ``accelerate launch -m`` needs)."""

import sys

from dpft.finetune.commands.cli import main

sys.exit(main())
