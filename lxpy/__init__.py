"""lxpy: system containers on btrfs, supervised by an async daemon."""

__version__ = "0.2.0"
