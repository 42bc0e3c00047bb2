"""`python -m pgq` runs the CLI."""

from pgq.cli import main

main()
