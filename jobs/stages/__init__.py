"""The stages a command runs — enqueue, inference, write-cache — and what they share: preflight
checks, starting or joining Ray, the run guard, the progress display, run summaries and the
errors a stopped run reports. Imports ``actors``, ``classifiers``, ``queue_store``,
``jobs.posts`` and ``jobs.config``; never ``jobs.cli``."""
