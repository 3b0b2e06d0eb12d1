"""eexp: train language agents from their own early experience (arXiv 2510.08558)."""

__version__ = "0.1.0"
