"""`python eval.py ...` = `m2det-eval ...`: the program is src/cli/eval.py."""
import sys

from src.cli.eval import main, parse_args  # noqa: F401  (parse_args: used by tests)

if __name__ == "__main__":
    sys.exit(main())
