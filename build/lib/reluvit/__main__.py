"""``python -m reluvit``: the ``reluvit`` command."""

from reluvit.cli import main

main()
