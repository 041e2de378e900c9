"""``python -m dynarec`` = the ``dynarec`` command (also what ``torchrun -m dynarec`` launches)."""
import sys

from dynarec.cli import main

sys.exit(main())
