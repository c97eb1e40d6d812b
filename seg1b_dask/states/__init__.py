"""One module per state S0-S9: a pure typed core plus a thin I/O and Dask wrapper."""
