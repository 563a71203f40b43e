"""``python -m emu35_client`` is the ``emu35-client`` command."""
import sys

from .cli import main

sys.exit(main())
