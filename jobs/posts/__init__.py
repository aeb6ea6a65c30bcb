"""Input posts: which parquet files a date range selects (their footers checked first) and
their posts in bounded batches (``source``); the compact set of known uris for enqueue-time
dedupe. Imports ``queue_store`` and ``jobs.config`` only."""
