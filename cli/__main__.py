"""``python -m cli``: the same as the ``lookalike`` command."""

from cli.main import main

main()
