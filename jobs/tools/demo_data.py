"""Write realistic synthetic posts in the input layout (``partition_date=YYYY-MM-DD/*.parquet``).

    python -m jobs.tools.demo_data --posts 5000 --days 7 --out demo_data/posts

Posts vary in length; some are about groups in conflict or cooperation, most are personal;
a few are invalid (empty, "null", too short, no timestamp) and a few repeat a uri, on purpose.
"""
from __future__ import annotations

import argparse
import random
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

GROUPS = ["Democrats", "Republicans", "immigrants", "the police", "union workers", "landlords",
          "Christians", "Muslims", "young people", "boomers", "city folks", "farmers",
          "the other team's fans", "the government", "protesters", "tech bros"]
CONFLICT = ["{a} keep blaming {b} for everything that goes wrong.",
            "Why do {a} always attack {b} like this?",
            "{a} and {b} are at each other's throats again over the new law.",
            "Honestly {a} will never understand {b}, and they don't want to.",
            "The fight between {a} and {b} is tearing this town apart."]
COOPERATION = ["{a} and {b} came together to rebuild the shelter after the storm.",
               "Proud to see {a} standing side by side with {b} today.",
               "{a} reached out to {b} and they agreed on a plan together."]
PERSONAL = ["Just had the best coffee of my life.", "My cat refuses to get off my keyboard.",
            "Rainy Sunday, staying in with a book.", "Finally finished that 10k run!",
            "Anyone know a good pizza place near the station?", "New haircut, who dis.",
            "Can't believe it's already December.", "Baking bread for the first time today.",
            "Watching the sunset from the balcony.", "Lost my keys again, classic me."]
FILLER = ["to be honest", "and I mean it", "no joke", "for real this time", "again",
          "as usual", "which is wild", "if you ask me", "just saying", "and that's that"]
INVALID = ["", "   ", "null", "None", "nan", "ok"]


def make_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        a, b = rng.sample(GROUPS, 2)
        text = rng.choice(CONFLICT if rng.random() < 0.7 else COOPERATION).format(a=a, b=b)
    else:
        text = rng.choice(PERSONAL)
    extra = int(rng.lognormvariate(1.0, 1.0))
    return text + "".join(f" {rng.choice(FILLER)}" for _ in range(min(extra, 60)))


def make_day(rng: random.Random, day: date, n: int, first_id: int) -> pa.Table:
    uris, texts, stamps = [], [], []
    for i in range(n):
        uid = first_id + i
        stamp = f"{day.isoformat()}-{rng.randrange(24):02d}:{rng.randrange(60):02d}:00"
        text = make_text(rng)
        roll = rng.random()
        if roll < 0.01:
            text = rng.choice(INVALID)
        elif roll < 0.012:
            stamp = None
        elif roll < 0.02 and uid > first_id:
            uid -= 1  # repeats the previous post's uri
        uris.append(f"at://did:plc:demo{uid % 997:04d}/app.bsky.feed.post/{uid:09d}")
        texts.append(text)
        stamps.append(stamp)
    return pa.table({"uri": uris, "text": texts, "preprocessing_timestamp": stamps,
                     "author_lang": ["en"] * n})


def write_demo(out: Path, posts: int, days: int, start: date, seed: int = 7) -> int:
    rng = random.Random(seed)
    per_day = [posts // days + (1 if d < posts % days else 0) for d in range(days)]
    first = 0
    for d, n in enumerate(per_day):
        day = start + timedelta(days=d)
        folder = out / f"partition_date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        # Row groups of 10k posts: readers stream a group at a time, as with real exports.
        pq.write_table(make_day(rng, day, n, first), folder / "part-0.parquet",
                       row_group_size=10_000)
        first += n
    return first


def write_gold(posts: Path, out: Path, sample: int | None = None, seed: int = 0) -> int:
    """A gold file for the demo posts, known from how they were made: a post made from a
    conflict or cooperation template is ``intergroup``, a personal one ``not_intergroup``.
    Only the posts enqueue accepts are in it (the same validation: text, timestamp, the first
    of a repeated uri). Writes ``uri,label`` CSV (a random ``sample`` of them, or all). It
    checks the plumbing, not a model: the templates are the labels."""
    import csv

    import pyarrow.dataset as pads

    from queue_store.rows.validation import as_post_table, split_valid

    table = pads.dataset(posts, partitioning="hive").to_table(
        columns=["uri", "text", "preprocessing_timestamp"])
    valid = split_valid(as_post_table(table)).valid
    rows = {}
    for r in valid.to_pylist():
        text = r["text"].strip()
        rows[r["uri"]] = ("not_intergroup" if any(text.startswith(p) for p in PERSONAL)
                          else "intergroup")
    uris = sorted(rows)
    if sample is not None:
        uris = sorted(random.Random(seed).sample(uris, min(sample, len(uris))))
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "label"])
        writer.writerows((u, rows[u]) for u in uris)
    return len(uris)


def write_feeds(posts: Path, out: Path, per_day: int = 300, lookback_days: int = 3,
                seed: int = 0) -> dict[str, int]:
    """Feed files for the demo posts (``-r posts_used_in_feeds``): for each posts day D, the
    uris of ``per_day`` posts of days D-lookback_days .. D served that day (a post may be
    served on several days), in ``<out>/partition_date=D/feed.parquet``. Returns uris per day."""
    import pyarrow.dataset as pads

    rng = random.Random(seed)
    days = sorted(p.name.split("=", 1)[1] for p in posts.glob("partition_date=*"))
    by_day = {d: pads.dataset(posts / f"partition_date={d}").to_table(
        columns=["uri"]).column("uri").to_pylist() for d in days}
    written = {}
    for d in days:
        first = (date.fromisoformat(d) - timedelta(days=lookback_days)).isoformat()
        pool = [u for day in days if first <= day <= d for u in by_day[day]]
        served = rng.sample(pool, min(per_day, len(pool)))
        folder = out / f"partition_date={d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uri": served}), folder / "feed.parquet")
        written[d] = len(served)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=5000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--start", type=date.fromisoformat, default=date(2024, 10, 1))
    ap.add_argument("--out", type=Path, default=Path("demo_data/posts"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--gold", type=Path, metavar="CSV",
                    help="instead: write a gold file (uri,label) for the posts at --out")
    ap.add_argument("--gold-sample", type=int, help="with --gold: a random sample of N posts")
    ap.add_argument("--feeds", type=Path, metavar="DIR",
                    help="instead: write feed files (uris served per day) for the posts at --out")
    args = ap.parse_args()
    if (args.feeds or args.gold) and not any(args.out.glob("partition_date=*")):
        ap.exit(2, f"error: no posts at {args.out} (partition_date=YYYY-MM-DD folders): "
                   "write them first, e.g. python -m jobs.tools.demo_data --out "
                   f"{args.out}\n")
    if args.feeds:
        n = sum(write_feeds(args.out, args.feeds).values())
        print(f"wrote {n} served uris for {args.out} to {args.feeds}")
        return
    if args.gold:
        n = write_gold(args.out, args.gold, args.gold_sample)
        print(f"wrote {n} gold labels for {args.out} to {args.gold}")
        return
    n = write_demo(args.out, args.posts, max(args.days, 1), args.start, args.seed)
    print(f"wrote {n} posts over {args.days} day(s) to {args.out}")


if __name__ == "__main__":
    main()
