"""``python -m qcore_bench`` is the same as the ``qcore-bench`` command."""

from .cli import main

main()
