"""ComfyUI node classes, gathered from one module per feature."""

from . import (example_inputs, score_nodes, style_mix_nodes, stylemamba_nodes, stylestudio_dit_ipadapter_nodes, stylestudio_dit_nodes,
               stylestudio_nodes, training_nodes, vct_nodes)

_MODULES = (stylemamba_nodes, style_mix_nodes, stylestudio_nodes, stylestudio_dit_nodes, stylestudio_dit_ipadapter_nodes,
            training_nodes, score_nodes, vct_nodes)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

example_inputs.install_example_inputs()  # the templates' pictures into ComfyUI's input folder (none outside ComfyUI)
