"""Pure-torch core of StyleStudio cross-modal AdaIN: imports without ComfyUI."""
