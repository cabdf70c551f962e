"""`python -m core …`: the command line lives in core/cli/ (main.py parses, commands.py and its
siblings declare the subcommands)."""
import sys

from core.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
