"""`python convert_dataset.py ...` = `m2det-convert-dataset ...`: the program is src/cli/convert_dataset.py."""
import sys

from src.cli.convert_dataset import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
