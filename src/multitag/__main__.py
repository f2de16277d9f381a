"""``python -m multitag``: the command line, for shells where ``multitag`` is not on the PATH."""

from multitag.cli.main import main

main()
