"""Pure-torch core of the StyleMamba style fusion: imports without ComfyUI."""
