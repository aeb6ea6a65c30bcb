"""The backfill CLI in its own OS process, its enqueue stuck after a given number of
committed chunks (as if the posts' storage stopped answering), so that a test can kill the
command part-way through its enqueue while its inference runs. Args: chunks, then the
CLI's own arguments."""
from __future__ import annotations

import sys
import time

from jobs.backfill import main
from jobs.stages import enqueue

if __name__ == "__main__":
    chunks = int(sys.argv[1])
    flush = enqueue.Feed.flush
    flushed = 0

    def stuck_after_chunks(self, final: bool) -> None:
        global flushed
        flush(self, final)
        flushed += 1
        while flushed >= chunks:
            time.sleep(1)  # killed here

    enqueue.Feed.flush = stuck_after_chunks
    sys.exit(main(sys.argv[2:]))
