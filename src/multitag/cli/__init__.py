"""The ``multitag`` command line: one module per command group."""
