"""The generation engine: runs in a plain process, no Ray (DESIGN.md §5)."""
