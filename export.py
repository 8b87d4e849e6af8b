"""Export a trained detector to MINDIR / ONNX.

Not implemented yet (issue 6: weight conversion, export and inference). This CLI exits with
a clear message instead of a traceback so scripts that call it fail loudly.
"""
import sys

if __name__ == "__main__":
    print("export.py is not implemented yet: MINDIR/ONNX export lands with the export issue "
          "(see the status table in README.md)", file=sys.stderr)
    sys.exit(2)
