"""``python3 -m gateway`` runs the ``smsgw`` CLI."""

import sys

from gateway.cli import main

sys.exit(main())
