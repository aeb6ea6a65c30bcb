"""Which posts and integrations an enqueue feeds, through the CLI: a reproducible sample decided
by the uri, the last N days/hours by each post's own timestamp, and one error line for each
bad combination of flags; without -i, every integration."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.backfill import main
from tests.queue_helpers import NAME, Store, input_uris, queued_uris
from tests.cli_helpers import write_config, write_posts
from tests.pipeline_helpers import PLUGIN


def _queued(tmp_path, data: str, posts, *flags: str) -> set[str]:
    cfg = write_config(tmp_path / data, {"type": PLUGIN}, posts=posts)
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g", "--quiet",
                 *flags]) == 0
    store = Store(tmp_path / data / "data", NAME)
    try:
        return queued_uris(store, input_uris(posts))
    finally:
        store.close()


def test_a_sample_is_reproducible_and_a_larger_proportion_keeps_a_superset(tmp_path, capsys):
    posts = write_posts(tmp_path, 2000, days=2)
    every = _queued(tmp_path, "all", posts)
    a = _queued(tmp_path, "a", posts, "--sample-records", "--sample-proportion", "0.3")
    out = capsys.readouterr().out
    again = _queued(tmp_path, "b", posts, "--sample-records", "--sample-proportion", "0.3")
    more = _queued(tmp_path, "c", posts, "--sample-records", "--sample-proportion", "0.6")
    other_seed = _queued(tmp_path, "d", posts, "--sample-records", "--sample-proportion",
                         "0.3", "--sample-seed", "7")
    assert a == again and a < more < every and a != other_seed
    assert 0.25 < len(a) / len(every) < 0.35 and 0.55 < len(more) / len(every) < 0.65
    sampled_out = int(out.split("sampled_out")[1].split()[0])
    assert sampled_out >= len(every) - len(a)  # invalid posts may be sampled out too


class _Clock(datetime):
    """The command's clock, fixed: a window's first day must not depend on when tests run."""
    fixed: datetime

    @classmethod
    def now(cls, tz=None):
        return cls.fixed.astimezone(tz)


@pytest.fixture
def clock(monkeypatch):
    """Set ``clock(when)``: every command after it runs at ``when`` (UTC)."""
    def set_now(when: datetime) -> datetime:
        monkeypatch.setattr(_Clock, "fixed", when, raising=False)
        return when
    monkeypatch.setattr("jobs.cli.stages.datetime", _Clock)
    return set_now


@pytest.mark.parametrize("at", ["12:00", "01:00"], ids=["inside_one_day", "across_midnight"])
def test_a_relative_window_keeps_posts_by_their_own_timestamp(tmp_path, capsys, clock, at):
    """A window keeps posts by their timestamp, not their partition: the 3-hour-old post is
    read (its day is the window's first) and left out. At 01:00 the 2-hour window starts on
    the day before, and that day's posts inside it are kept."""
    now = clock(datetime.fromisoformat(f"2026-06-15T{at}:00+00:00"))
    ages = {"1h": timedelta(hours=1), "90m": timedelta(minutes=90), "3h": timedelta(hours=3),
            "30h": timedelta(hours=30), "5d": timedelta(days=5)}
    posts = tmp_path / "posts"
    for name, age in ages.items():
        when = now - age
        day = posts / f"partition_date={when:%Y-%m-%d}"
        day.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uri": [f"at://{name}"], "text": [f"a post {name} old"],
                                 "preprocessing_timestamp": [f"{when:%Y-%m-%d-%H:%M:%S}"]}),
                       day / f"{name}.parquet")
    two_hours = _queued(tmp_path, "h", posts, "--backfill-period", "hours",
                        "--backfill-duration", "2")
    assert "outside_window" in capsys.readouterr().out
    two_days = _queued(tmp_path, "d", posts, "--backfill-period", "days",
                       "--backfill-duration", "2")
    assert two_hours == {"at://1h", "at://90m"}
    assert two_days == {"at://1h", "at://90m", "at://3h", "at://30h"}


@pytest.mark.parametrize("flags,needle", [
    (["--sample-records"], "needs --sample-proportion"),
    (["--sample-records", "--sample-proportion", "0"], "outside (0, 1]"),
    (["--sample-records", "--sample-proportion", "1.5"], "outside (0, 1]"),
    (["--sample-proportion", "0.5"], "only goes with --sample-records"),
    (["--backfill-period", "days"], "go together"),
    (["--backfill-duration", "3"], "go together"),
    (["--backfill-period", "days", "--backfill-duration", "3", "--start-date", "2024-10-01"],
     "drop --start-date"),
])
def test_bad_selection_flags_are_one_error_line_before_anything(tmp_path, capsys, flags,
                                                                needle):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 *flags]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "data").exists()


def test_sampling_without_an_enqueue_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, {"type": PLUGIN})
    assert main(["--config", str(cfg), "--queue-status", "--sample-records",
                 "--sample-proportion", "0.5"]) == 2
    assert "only go with --add-to-queue" in capsys.readouterr().err


def test_without_i_every_integration_of_the_config_is_enqueued(tmp_path, capsys):
    import yaml

    posts = write_posts(tmp_path, 300, days=1)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    raw = yaml.safe_load(cfg.read_text())
    raw["integrations"]["ml_inference_valence"] = {"code": "v", "classifier": {
        "type": "vader"}}
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "--quiet"]) == 0
    queued = {}
    for name in raw["integrations"]:
        store = Store(tmp_path / "data", name)
        queued[name] = queued_uris(store, input_uris(posts))
        store.close()
    assert queued[NAME] == queued["ml_inference_valence"] and len(queued[NAME]) > 280


def test_sampling_and_window_counters_add_up_to_the_rows_read(tmp_path, clock):
    """Every row read is accounted for once: enqueued, sampled out, outside the window,
    invalid or a repeat — and each counter is the number worked out from the posts."""
    import json

    import xxhash

    now = clock(datetime(2026, 6, 15, 20, 0, tzinfo=timezone.utc))
    posts = tmp_path / "posts"
    rows = []
    for i in range(400):
        when = now - timedelta(hours=(i % 8) * 6)  # 0 … 42 hours old
        rows.append({"uri": f"at://p/{i}", "text": f"a post number {i} about things",
                     "preprocessing_timestamp": f"{when:%Y-%m-%d-%H:%M:%S}"})
    rows += [dict(rows[0]), {"uri": "at://short", "text": "hi",
                             "preprocessing_timestamp": rows[0]["preprocessing_timestamp"]}]
    day = posts / f"partition_date={now:%Y-%m-%d}"
    day.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), day / "p.parquet")
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    assert main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g", "--quiet",
                 "--sample-records", "--sample-proportion", "0.5", "--backfill-period",
                 "hours", "--backfill-duration", "25"]) == 0
    [saved] = (tmp_path / "data" / "runs").glob("*.json")
    s = json.loads(saved.read_text())
    inside = [r for r in rows if now - datetime.strptime(r["preprocessing_timestamp"],
              "%Y-%m-%d-%H:%M:%S").replace(tzinfo=timezone.utc) <= timedelta(hours=25)]
    chosen = [r for r in inside if xxhash.xxh3_64_intdigest(r["uri"].encode(), 0) < 2 ** 63]
    assert s["rows_read"] == len(rows)
    assert s["outside_window"] == len(rows) - len(inside)
    assert s["sampled_out"] == len(inside) - len(chosen)
    assert s["rows_read"] == (s["enqueued"] + s["sampled_out"] + s["outside_window"]
                              + s["rejected_invalid"] + s["skipped_duplicate"]
                              + s["skipped_known"] + s["skipped_other_version"])
    assert s["enqueued"] == len({r["uri"] for r in chosen if r["text"] != "hi"})


def test_a_selection_matching_no_post_exits_4_and_names_the_days_of_the_posts(tmp_path,
                                                                              capsys, clock):
    """Days without posts, a window (ending now) before all of the data, a range after it:
    exit 4 with one line naming what was asked for and the posts' first and last day;
    nothing queued. Queueing the same posts twice is no such case: exit 0."""
    posts = write_posts(tmp_path, 200, days=3)  # 2024-10-01 … 2024-10-03
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    base = ["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g"]
    today = clock(datetime(2026, 6, 15, 0, 30, tzinfo=timezone.utc))
    for flags, asked in (
            (["--start-date", "2030-01-01", "--end-date", "2030-01-02"],
             "the days 2030-01-01 to 2030-01-02"),
            (["--start-date", "2031-05-01"], "the days from 2031-05-01 on"),
            (["--backfill-period", "days", "--backfill-duration", "2"],
             f"the last 2 days, ending now: {today - timedelta(days=2):%Y-%m-%d}")):
        assert main([*base, *flags]) == 4, flags
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.startswith("enqueue:")]
        assert line.startswith(f"enqueue: no post matched {asked}"), line
        assert "are dated 2024-10-01 to 2024-10-03" in line and line.endswith("(exit 4)")
        if "--backfill-period" in flags:
            assert "window: the last 2 days, ending now: " in err  # the banner says it too
            assert f"to {today:%Y-%m-%d}" in err, err
    assert not Store(tmp_path / "data", NAME).status().pending_posts
    assert main([*base, "--quiet"]) == 0
    queued = Store(tmp_path / "data", NAME).status().pending_posts
    assert queued > 150 and main([*base, "--quiet"]) == 0  # all known already: not exit 4
    assert Store(tmp_path / "data", NAME).status().pending_posts == queued


def test_the_full_command_over_days_without_posts_exits_4(inprocess, tmp_path, capsys):
    posts = write_posts(tmp_path, 100, days=2)
    cfg = write_config(tmp_path, {"type": PLUGIN}, posts=posts)
    got = main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                "--run-integrations", "--write-cache", "all", "--start-date", "2030-01-01"])
    out, err = capsys.readouterr()
    assert got == 4, err
    assert "no post matched the days from 2030-01-01 on" in err
    assert "are dated 2024-10-01 to 2024-10-02" in err and "Traceback" not in err
