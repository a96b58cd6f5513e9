"""``python -m kernel_core ARGS`` is ``kcore ARGS``; launchers that start a module on every rank
(``torchrun -m kernel_core finetune ...``, ``accelerate launch -m kernel_core finetune ...``) use it."""

import sys

from kernel_core.cli import main

sys.exit(main())
