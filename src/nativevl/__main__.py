"""`python -m nativevl ...`: the same as the `nativevl` command (nativevl/cli.py lists its subcommands)."""

from nativevl.cli import main

main()
