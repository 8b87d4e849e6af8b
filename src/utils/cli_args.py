"""Command-line pieces shared by the programs: argparse value types that refuse nonsense, naming
the flag, and the flags that name a model (`add_model_arguments`).

    p.add_argument("--epochs", type=positive_int)      # --epochs -1 -> usage error, exit 2
"""
from __future__ import annotations

import argparse


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1] (score thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_model_arguments(parser) -> None:
    """The flags that name the model of infer.py and serve.py: --config, and --checkpoint or --mindir."""
    parser.add_argument("--config", default=None, help="default: the config stored in the checkpoint / MINDIR sidecar")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="MindSpore checkpoint of the config's network")
    model.add_argument("--mindir", help="MINDIR written by export.py (its .json description is read too)")
