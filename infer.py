"""`python infer.py ...` = `m2det-infer ...`: the program is src/cli/infer.py."""
import sys

from src.cli.infer import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
