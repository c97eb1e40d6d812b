"""seg1b_dask: Segment 1B of the synthetic data engine — where on Earth every outlet sits."""

__version__ = "0.1.0"
