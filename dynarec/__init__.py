"""dynarec: multi-domain, multi-task CTR prediction with dynamic weights."""
__version__ = "0.1.0"
