import sys

from detserve.server.rayserve.cli import main

sys.exit(main())
