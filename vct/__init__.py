"""VCT (Visual Concept Translator, arXiv 2307.14352): DDIM/null-text inversion, concept inversion and dual-stream
fusion with prompt-to-prompt attention control, in plain torch (no ComfyUI import)."""
