"""Small generic helpers shared by the tools (file I/O)."""
from src.utils.io import atomic_write, write_json_atomic

__all__ = ["atomic_write", "write_json_atomic"]
