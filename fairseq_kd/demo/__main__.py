import sys

from .stages import cli_main

sys.exit(cli_main())
