"""Command-line tools of vlt_common, run as ``python -m vlt_common.tools.<name>``."""
