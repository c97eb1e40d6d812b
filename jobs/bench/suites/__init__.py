"""The benchmark suites, one file each; ``run.py`` names them."""
