"""Row shapes and types: what a post is (and which posts are valid), what a result row carries
between the classifier stage and the writer, and the one Arrow type each output column keeps.

Plain Python and pyarrow: imports nothing from the rest of the project but
``queue_store.models``; every other package takes its column names from ``shapes``.
"""
