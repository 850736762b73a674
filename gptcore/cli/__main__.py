"""`python -m gptcore.cli`: the `gptcore` command, run without its console script."""

from gptcore.cli import main

main()
