"""`python serve.py ...` = `m2det-serve ...`: the program is src/cli/serve.py."""
import sys

from src.cli.serve import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
