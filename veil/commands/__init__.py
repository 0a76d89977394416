"""
The C{veil} command's groups of subcommands, one module each.

Each module has a C{register(commands)} that adds its parsers to the
C{veil} command line (L{veil.cli}); its handlers run on the reactor with a
L{veil.commands.base.Stores}.  A new group is a new module here and one
entry in L{veil.cli.GROUPS}.
"""
