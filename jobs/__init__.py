"""The job: the command line, the stages it wires, and what researchers do with the labels.

``backfill`` is the entry point (``python -m jobs.backfill``); ``config`` the YAML job config.
Sub-packages by concept: ``cli/`` (flags, admin verbs, the closing lines), ``stages/`` (enqueue,
inference, write-cache and what they share: preflight, Ray set-up, the run guard, progress,
summaries, errors), ``posts/`` (finding and reading posts files), ``labels/`` (reading the
labels back: evaluation, report), ``tools/`` (the demo-data generator).

The top layer: may import ``actors``, ``classifiers`` and ``queue_store``; nothing imports it.
"""
