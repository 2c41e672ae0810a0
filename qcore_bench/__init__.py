"""qcore-bench: coreset selection for quantization-aware training, benchmarked.

The public API for selector plugins is re-exported here.
"""

from .selection import Outputs, Selection, SelectionContext, Selector

__version__ = "0.1.0"

__all__ = ["Outputs", "Selection", "SelectionContext", "Selector", "__version__"]
