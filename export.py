"""`python export.py ...` = `m2det-export ...`: the program is src/cli/export.py."""
import sys

from src.cli.export import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
