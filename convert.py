"""`python convert.py ...` = `m2det-convert ...`: the program is src/cli/convert.py."""
import sys

from src.cli.convert import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
