"""The command line: flags and their checks (``args``), admin verbs for people (``admin``),
the lines and exit code a run ends with (``endings``). Imports ``jobs.stages`` and below."""
