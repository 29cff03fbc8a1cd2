"""`python -m tokenworks` runs the CLI."""

from tokenworks.cli import main

main()
