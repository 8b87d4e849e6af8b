"""`python train.py ...` = `m2det-train ...`: the program is src/cli/train.py."""
import sys

from src.cli.train import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
