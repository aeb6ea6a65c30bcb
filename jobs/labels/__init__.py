"""Reading the labels back: one config_hash of an integration's output (``output``), the
labels against a hand-labelled sample (``evaluation``), a self-contained HTML report
(``report``). Imports ``queue_store`` and ``jobs.config`` only; no Ray."""
