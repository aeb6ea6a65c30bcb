"""``-r posts_used_in_feeds`` through the CLI: per feed day, the look-back window's posts
whose uri was served that day, each once; missing feed days are said."""
from __future__ import annotations

import shutil
from datetime import date, timedelta

import pyarrow.dataset as pads
import yaml

from jobs.backfill import main
from jobs.tools.demo_data import write_feeds
from tests.queue_helpers import NAME, Store, input_uris, queued_uris
from queue_store.rows.validation import as_post_table, split_valid
from tests.cli_helpers import write_config, write_posts
from tests.pipeline_helpers import PLUGIN


def _expected(posts, feeds, lookback: int, start: date, end: date) -> set[str]:
    """Worked out the slow way, from the files."""
    table = pads.dataset(posts, partitioning="hive").to_table()
    valid = split_valid(as_post_table(table.select(["uri", "text",
                                                    "preprocessing_timestamp"]))).valid
    valid_uris = set(valid.column("uri").to_pylist())
    day_of = {r["uri"]: r["partition_date"] for r in table.select(
        ["uri", "partition_date"]).to_pylist()}
    want = set()
    d = start
    while d <= end:
        folder = feeds / f"partition_date={d.isoformat()}"
        if folder.exists():
            for uri in pads.dataset(folder).to_table().column("uri").to_pylist():
                posted = date.fromisoformat(str(day_of[uri]))
                if d - timedelta(days=lookback) <= posted <= d and uri in valid_uris:
                    want.add(uri)
        d += timedelta(days=1)
    return want


def test_posts_served_in_feeds_are_queued_once_and_missing_days_are_said(tmp_path, capsys):
    posts = write_posts(tmp_path, 2100, days=7)
    feeds = tmp_path / "feeds"
    write_feeds(posts, feeds, per_day=250, lookback_days=3)
    shutil.rmtree(feeds / "partition_date=2024-10-05")  # a day the feed export missed
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    raw = yaml.safe_load(cfg.read_text())
    raw["feeds"] = {"path": str(feeds), "lookback_days": 2}  # narrower than the feeds' own
    cfg.write_text(yaml.safe_dump(raw))
    argv = ["--config", str(cfg), "-r", "posts_used_in_feeds", "--add-to-queue", "-i", "g",
            "--start-date", "2024-10-03", "--end-date", "2024-10-06"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 day(s) of the range have no feed files" in captured.err
    assert "2024-10-05" in captured.err and "missing_feed_days" in captured.out
    store = Store(tmp_path / "data", NAME)
    got = queued_uris(store, input_uris(posts))
    want = _expected(posts, feeds, 2, date(2024, 10, 3), date(2024, 10, 6))
    assert got == want and 200 < len(want) < 1000
    assert store.status().pending_posts == len(want)  # each once, though served twice
    assert main(argv) == 0  # again: nothing new
    assert store.status().pending_posts == len(want)
    store.close()


def test_feeds_need_a_feeds_path(tmp_path, capsys):
    write_posts(tmp_path, 100, days=1)
    cfg = write_config(tmp_path, {"type": PLUGIN})
    assert main(["--config", str(cfg), "-r", "posts_used_in_feeds", "--add-to-queue",
                 "-i", "g"]) == 2
    assert "needs feeds.path in the config" in capsys.readouterr().err


def test_a_feed_file_without_a_uri_column_is_refused_before_anything_is_queued(tmp_path,
                                                                              capsys):
    """Preflight reads every feed file's footer: one line naming the file, exit 2, no queue —
    also in the one-command form, which would otherwise start labelling beside the enqueue."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    posts = write_posts(tmp_path, 300, days=3)
    feeds = tmp_path / "feeds"
    write_feeds(posts, feeds, per_day=50, lookback_days=1)
    bad = feeds / "partition_date=2024-10-02" / "feed.parquet"
    pq.write_table(pa.table({"post_uri": ["at://x"]}), bad)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    raw = yaml.safe_load(cfg.read_text())
    raw["feeds"] = {"path": str(feeds), "lookback_days": 1}
    cfg.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["--config", str(cfg), "-r", "posts_used_in_feeds", "--add-to-queue", "-i",
                 "g", "--run-integrations", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "no text uri column" in err[0], err
    assert "post_uri" in err[0]
    assert not (tmp_path / "data" / "queue" / f"{NAME}.db").exists()


def test_demo_feeds_over_posts_that_do_not_exist_is_an_error(tmp_path):
    """``demo_data --feeds`` needs the posts it serves: none there is exit 2 and one line
    (it wrote "0 served uris" and exited 0)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    got = subprocess.run([sys.executable, "-m", "jobs.tools.demo_data", "--out",
                          str(tmp_path / "nothing"), "--feeds", str(tmp_path / "feeds")],
                         cwd=root, capture_output=True, text=True)
    assert got.returncode == 2 and "error: no posts at" in got.stderr, got
    assert not (tmp_path / "feeds").exists()
