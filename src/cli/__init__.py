"""The command-line programs: `m2det-<name>` (pyproject.toml) and `python <name>.py` both call
`src.cli.<name>.main`."""
