"""``python -m comfyui_stylemamba``: the command-line tools."""

import sys

from .stylemamba.cli import main

sys.exit(main())
