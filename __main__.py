"""``python -m comfyui_stylemamba``: the command-line tools (also what ``torchrun -m comfyui_stylemamba`` runs)."""

import sys

from .sys_path_guard import drop_package_folder

drop_package_folder()  # before the CLI imports transformers/diffusers: ``python -m`` from this folder puts it first

from .stylemamba.cli import main  # noqa: E402

sys.exit(main())
