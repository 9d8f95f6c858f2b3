"""Everything that fits or judges a StyleMamba model: losses, fitting, multi-style training, metrics, baselines.

Imports the model core (``..``), never the reverse: StyleFuse needs none of this.
"""
