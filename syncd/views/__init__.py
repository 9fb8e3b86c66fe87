"""Pure presentation: plans, status, explain, history and validation as text, markdown and JSON.

No I/O, no clock, no printing: the CLI and the daemon hand values in and print what comes
back. Every user string passes through `views.text.clean` on its way to a terminal.
"""
