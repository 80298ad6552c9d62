import sys

from .pipeline import cli_main

sys.exit(cli_main())
