"""`python -m pagedc` is the `pagedc` command."""

from pagedc.cli import main

main(prog_name="pagedc")
