"""``python -m services.settings [--write]``: print (or write docs/settings.md) the table of
every setting."""
import sys
from pathlib import Path

from .sources import settings_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"

if "--write" in sys.argv[1:]:
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(settings_table())
    print(DOC)
else:
    sys.stdout.write(settings_table())
