"""The Ray side of a run: the QueueActor (claims, leases, completions), the Ray Data source
its read tasks pull from, the classifier stage (``map_batches``), the WriterActor
(completions and parquet), the StageReports (crash journal, fatal errors, progress) and the
typed stats they report. Wraps ``queue_store`` and ``classifiers`` for Ray; imports nothing
from ``jobs``."""
