"""``python -m mtproxy`` behaves exactly like the ``mtproxy`` command."""

import sys

from mtproxy.cli import main

sys.exit(main())
