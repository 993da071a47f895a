"""One module per schema revision of the statistics store, oldest first (``0001_...``)."""
