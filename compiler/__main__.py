"""`python -m pagedc` is the `pagedc` command."""

from pagedc.entry import run

run()
