"""Convert PyTorch weights (vgg16_reducedfc.pth, M2Det release checkpoints) to MindSpore ckpt.

Not implemented yet (issue 6: weight conversion, export and inference). This CLI exits with
a clear message instead of a traceback so scripts that call it fail loudly.
"""
import sys

if __name__ == "__main__":
    print("convert.py is not implemented yet: weight conversion lands with the conversion issue "
          "(see the status table in README.md)", file=sys.stderr)
    sys.exit(2)
