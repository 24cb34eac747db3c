"""smsgw — SMS customer-care gateway."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable; sql/ and templates_sms/ live beside it).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
