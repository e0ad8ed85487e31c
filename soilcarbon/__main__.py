"""``python -m soilcarbon`` runs the command."""

from soilcarbon.cli import main

main()
