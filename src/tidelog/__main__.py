"""`python -m tidelog`: the command line (tidelog.cli)."""
from tidelog.cli import main

main()
