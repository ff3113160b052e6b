"""Pure data: names, container config, daemon settings, template definitions.

Nothing here imports trio, pyroute2, btrfsutil or textual.
"""
