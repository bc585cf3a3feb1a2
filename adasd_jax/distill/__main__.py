"""`python -m adasd_jax.distill ...`: the same as `adasd distill ...`."""
import sys

from adasd_jax import cli

sys.exit(cli.main(["distill", *sys.argv[1:]]))
