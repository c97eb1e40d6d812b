"""``python -m seg1b_dask.cli``: the same commands as ``seg1b``."""

from seg1b_dask.cli import main

main()
