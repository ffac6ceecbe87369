"""`python -m tunellm ...` runs the `tunellm` command."""

from tunellm.cli.main import main

main()
