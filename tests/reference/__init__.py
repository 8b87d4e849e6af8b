"""PyTorch reference implementations used only by tests (parity and checkpoint conversion)."""
