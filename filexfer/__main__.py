"""C{python -m filexfer}: the same as the C{filexfer} command."""

from filexfer.cli import main

main()
