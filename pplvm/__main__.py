"""``python -m pplvm``: the command line, also as torchrun starts it
(``torchrun --nproc_per_node=N -m pplvm fit CARD``)."""

import sys

from .cli import main

sys.exit(main())
