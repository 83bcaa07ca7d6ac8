"""C{python -m filexfer}: the same as the C{filexfer} command."""

from filexfer._start import main

main()
