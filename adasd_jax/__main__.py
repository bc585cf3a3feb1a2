import sys

from adasd_jax.cli import main

sys.exit(main())
