"""The pack's one exception base: every error it defines shows in ComfyUI as ``ClassName: message``.

ComfyUI imports a custom-node pack under its folder path as the module name, and its error dialog
names an exception's type ``module + "." + qualname`` unless the module is ``builtins``
(``execution.full_type_name``). Our exception types would read
``/…/custom_nodes/comfyui-stylemamba.stylemamba.checkpoint.CheckpointError``; so every subclass of
``PackError`` reports ``builtins`` as its module, which ComfyUI, ``traceback`` and pytest all print as
the bare class name, the way they print ``ValueError``. Such classes cannot be pickled by reference;
nothing in the pack pickles exceptions. This module imports nothing, so every layer may use it, except
``kernels``, which stays standalone and sets ``SelfCheckError.__module__`` itself.
"""

from __future__ import annotations

#: The module name ComfyUI's ``full_type_name`` (and ``traceback``) leave out of a type's name.
DISPLAY_MODULE = "builtins"


class PackError(Exception):
    """Base of every exception class this pack defines; mix it in before the builtin it refines.

    Example: ``class CheckpointError(PackError, ValueError)`` is still caught as a ValueError.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = DISPLAY_MODULE


PackError.__module__ = DISPLAY_MODULE
