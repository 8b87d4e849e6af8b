"""The label convention, one for the whole project.

- A *class label* is the 0-based index of a class in the dataset's category order
  (`0 .. C-1`, C foreground classes); the readers produce it, the heads' targets carry it, and
  detections and results report it (the dataset maps it back to its category id).
- Per anchor / prior, a target that is not a class is `BACKGROUND` (-1: a negative) or
  `IGNORE` (-2: in an assigner's ignore band, neither positive nor negative). The assigners use
  the same two values for "no ground-truth box" in their gt-index arrays.
- The softmax (multibox) head has a background score column: its column 0 is background and
  class label L is column L + 1 (`softmax_column`). That shift lives in that head's targets and
  output decoding only.
"""
BACKGROUND = -1
IGNORE = -2


def softmax_column(label):
    """Score column of class label `label` in a head whose column 0 is background."""
    return label + 1
