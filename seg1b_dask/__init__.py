"""seg1b_dask: Segment 1B of the synthetic data engine — where on Earth every outlet sits."""

import os

__version__ = "0.1.0"

# Our Dask messages are small (tasks read their own data), so offloading their
# serialization to a thread buys nothing; and the size estimate distributed makes before
# offloading overflows its recursion limit on the workers' deeply nested profile trees
# (the performance report fetches them), logging "Sizeof calculation … failed" on every
# certification. Read by distributed at import, inherited by the workers we start; a value
# the user set wins.
os.environ.setdefault("DASK_DISTRIBUTED__COMM__OFFLOAD", "false")
