"""Tools for people around a backfill: the demo-data generator (``demo_data``:
``python -m jobs.tools.demo_data``). Imports ``queue_store`` only."""
