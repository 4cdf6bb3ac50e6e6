"""``python -m ichnode``: the same as the ``ichnode`` command."""

from ichnode.cli import main

main()
