"""Readers: one per raw dataset format, registered by name; each returns a validated RatingLog.

Every reader is `read(folder: Path | None) -> RatingLog`. Bad input (missing or empty file, wrong
separator or columns, non-numeric or out-of-range rating) raises `E2URecError` with one line that
names the file. `ml-100k` and `ml-1m` read from the download cache (`e2urec data fetch`) when the
folder is None; `synthetic` generates a small default data set when the folder is None.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.schema import GENDERS, ML1M_AGES, ML1M_OCCUPATIONS, RatingLog
from e2urec.data.sources import SPECS, cache_dir, find_cached
from e2urec.data.synthetic import DEFAULT_SIZE, generate
from e2urec.errors import E2URecError, one_line
from e2urec.registry import Registry

Reader = Callable[[Path | None], RatingLog]
READERS: Registry[Reader] = Registry("dataset")

GOODREADS_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"


def require_file(folder: Path, name: str) -> Path:
    """`folder/name`, or one clear error that names the missing file."""
    path = Path(folder) / name
    if not path.is_file():
        raise E2URecError(f"missing file {path} (is --raw the right folder?)")
    if path.stat().st_size == 0:
        raise E2URecError(f"empty file {path}")
    return path


def dataset_folder(folder: Path | None, name: str) -> Path:
    """`folder`, or the cached download of `name` when folder is None, or one clear error."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise E2URecError(f"{name}: folder not found: {folder}")
        return folder
    cached = find_cached(name) if name in SPECS else None
    if cached is None:
        hint = f"run `e2urec data fetch {name}` or " if name in SPECS else ""
        raise E2URecError(
            f"{name}: no folder given and none in {cache_dir()}; {hint}pass --raw DIR"
        )
    return cached


def read_table(path: Path, sep: str, names: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a headerless delimited file; a wrong separator, column count or type is one clear error."""
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None,
            names=names,
            usecols=range(len(names)),
            encoding="latin-1",
            engine="python" if len(sep) > 1 else "c",
            dtype=str,
            keep_default_na=False,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise E2URecError(
            f"{path}: cannot parse as {sep!r}-separated {names} ({one_line(exc)})"
        ) from None
    if frame.empty:
        raise E2URecError(f"empty file {path}")
    if (frame[names[-1]] == "").all() and len(names) > 1:
        raise E2URecError(f"{path}: expected {len(names)} {sep!r}-separated columns {names}")
    convert_columns(path, frame, dtypes)
    return frame


def convert_columns(path: Path, frame: pd.DataFrame, dtypes: dict[str, str], skip: int = 0) -> None:
    """Convert text columns to numbers in place; the first bad value is one error naming its line.

    `skip` is the number of lines before the first row (1 for a header line).
    """
    for column, dtype in dtypes.items():
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise E2URecError(
                f"{path}: line {row + 1 + skip}: column {column!r} is not numeric "
                f"({frame[column].iloc[row]!r})"
            )
        frame[column] = converted.astype(dtype)


def check_ratings(
    path: Path, ratings: pd.DataFrame, low: float, high: float, skip: int = 0
) -> None:
    """Ratings outside [low, high] are one clear error naming the first offending line."""
    bad = ((ratings["rating"] < low) | (ratings["rating"] > high)).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise E2URecError(
            f"{path}: line {row + 1 + skip}: rating {ratings['rating'].iloc[row]:g} "
            f"outside [{low:g}, {high:g}]"
        )


def read_dat(path: Path, names: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a headerless `::`-separated Latin-1 file (MovieLens-1M) fast and strictly.

    `::` is rewritten to a tab so that pandas' C parser reads it (titles may hold single colons).
    An all-numeric file is parsed straight to numbers; any problem re-reads it as text to name the
    offending line.
    """
    text = path.read_bytes().replace(b"::", b"\t")
    options = dict(
        sep="\t", header=None, quoting=csv.QUOTE_NONE, encoding="latin-1", keep_default_na=False
    )
    if set(dtypes) == set(names):
        by_position = {i: dtypes[name] for i, name in enumerate(names)}
        try:
            frame = pd.read_csv(io.BytesIO(text), dtype=by_position, **options)
        except (ValueError, pd.errors.ParserError):
            frame = None
        if frame is not None and frame.shape[1] == len(names):
            frame.columns = names
            return frame
    try:
        frame = pd.read_csv(io.BytesIO(text), dtype=str, **options)
    except pd.errors.EmptyDataError:
        raise E2URecError(f"empty file {path}") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise E2URecError(
            f"{path}: cannot parse as '::'-separated {names} ({one_line(exc)})"
        ) from None
    if frame.shape[1] != len(names):
        raise E2URecError(
            f"{path}: expected {len(names)} '::'-separated fields {names}, found {frame.shape[1]}"
        )
    frame.columns = names
    convert_columns(path, frame, dtypes)
    return frame


def read_csv_with_header(path: Path, columns: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a comma-separated file with a header row that must hold `columns` (quotes honoured)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise E2URecError(f"empty file {path}") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise E2URecError(
            f"{path}: cannot parse as comma-separated values ({one_line(exc)})"
        ) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise E2URecError(
            f"{path}: header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}"
        )
    if frame.empty:
        raise E2URecError(f"empty file {path} (header only)")
    frame = frame[columns].copy()
    convert_columns(path, frame, dtypes, skip=1)
    return frame


@READERS.register(
    "ml-100k",
    description="MovieLens 100K (u.data, u.item, u.user); `e2urec data fetch ml-100k`",
    source="GroupLens",
)
def read_ml100k(folder: Path | None) -> RatingLog:
    """MovieLens-100K: `u.data` (tab), `u.item` and `u.user` (`|`), Latin-1."""
    folder = dataset_folder(folder, "ml-100k")
    data = require_file(folder, "u.data")
    ratings = read_table(
        data,
        "\t",
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(data, ratings, 1, 5)
    items = read_table(
        require_file(folder, "u.item"), "|", ["item_id", "title"], {"item_id": "int64"}
    )
    users = read_table(
        require_file(folder, "u.user"),
        "|",
        ["user_id", "age", "gender", "job"],
        {"user_id": "int64"},
    )
    users["gender"] = users["gender"].map(GENDERS).fillna("person")
    return RatingLog(ratings, items, users[["user_id", "gender", "age", "job"]]).validate(
        str(folder)
    )


def map_codes(path: Path, frame: pd.DataFrame, column: str, labels: dict) -> pd.Series:
    """Replace codes by labels; an unknown code is one error naming the file and line."""
    mapped = frame[column].map(labels)
    bad = mapped.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise E2URecError(
            f"{path}: line {row + 1}: unknown {column} code {frame[column].iloc[row]!r}; "
            f"valid: {', '.join(str(k) for k in labels)}"
        )
    return mapped.astype(str)


@READERS.register(
    "ml-1m",
    description="MovieLens 1M (users.dat, movies.dat, ratings.dat); `e2urec data fetch ml-1m`",
    source="GroupLens",
)
def read_ml1m(folder: Path | None) -> RatingLog:
    """MovieLens-1M: `users.dat`, `movies.dat`, `ratings.dat`, `::`-separated, Latin-1.

    Age and occupation codes become the official labels (`ML1M_AGES`, `ML1M_OCCUPATIONS`).
    """
    folder = dataset_folder(folder, "ml-1m")
    path = require_file(folder, "ratings.dat")
    ratings = read_dat(
        path,
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "int64", "timestamp": "int64"},
    )
    ratings["rating"] = ratings["rating"].astype("float64")
    check_ratings(path, ratings, 1, 5)
    items = read_dat(
        require_file(folder, "movies.dat"), ["item_id", "title", "genres"], {"item_id": "int64"}
    )
    path = require_file(folder, "users.dat")
    users = read_dat(
        path,
        ["user_id", "gender", "age", "job", "zip"],
        {"user_id": "int64", "age": "int64", "job": "int64"},
    )
    users["gender"] = map_codes(path, users, "gender", GENDERS)
    users["age"] = map_codes(path, users, "age", ML1M_AGES)
    users["job"] = map_codes(path, users, "job", ML1M_OCCUPATIONS)
    return RatingLog(ratings, items, users[["user_id", "gender", "age", "job"]]).validate(
        str(folder)
    )


@READERS.register(
    "movielens-csv",
    description="MovieLens 'latest' CSV layout (ratings.csv, movies.csv), half-star ratings",
    source="GroupLens",
)
def read_movielens_csv(folder: Path | None) -> RatingLog:
    """MovieLens "latest" layout: `ratings.csv` (userId,movieId,rating,timestamp; 0.5..5 stars)
    and `movies.csv` (movieId,title,genres; titles with commas are quoted). No user profiles.
    """
    folder = dataset_folder(folder, "movielens-csv")
    path = require_file(folder, "ratings.csv")
    ratings = read_csv_with_header(
        path,
        ["userId", "movieId", "rating", "timestamp"],
        {"userId": "int64", "movieId": "int64", "rating": "float64", "timestamp": "int64"},
    ).rename(columns={"userId": "user_id", "movieId": "item_id"})
    check_ratings(path, ratings, 0.5, 5, skip=1)
    items = read_csv_with_header(
        require_file(folder, "movies.csv"), ["movieId", "title", "genres"], {"movieId": "int64"}
    ).rename(columns={"movieId": "item_id"})
    return RatingLog(ratings, items, None).validate(str(folder))


def find_one(folder: Path, patterns: list[str], what: str) -> Path:
    """The single file in `folder` matching the first pattern that matches; else one clear error."""
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise E2URecError(f"{folder}: several {what} files ({names}); keep one per folder")
        if found:
            if found[0].stat().st_size == 0:
                raise E2URecError(f"empty file {found[0]}")
            return found[0]
    raise E2URecError(f"missing {what} file in {folder} (looked for {', '.join(patterns)})")


def read_json_lines(path: Path, columns: list[str]) -> pd.DataFrame:
    """The given fields of a JSON-lines file (optionally gzipped), as text; one error if bad."""
    rows: dict[str, list] = {c: [] for c in columns}
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise E2URecError(f"{path}: line {number}: not a JSON object") from None
                if not isinstance(record, dict):
                    raise E2URecError(f"{path}: line {number}: not a JSON object")
                for column in columns:
                    rows[column].append(record.get(column))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise E2URecError(f"{path}: cannot read ({one_line(exc)})") from None
    frame = pd.DataFrame(rows, dtype=object)
    if frame.empty:
        raise E2URecError(f"empty file {path}")
    return frame


def goodreads_timestamps(path: Path, frame: pd.DataFrame) -> pd.Series:
    """Unix seconds from `date_updated` (else `date_added`) like "Sun Jul 30 07:44:10 -0700 2017"."""
    stamps = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    for column in ("date_added", "date_updated"):
        if column in frame.columns:
            parsed = pd.to_datetime(
                frame[column].astype(str), format=GOODREADS_DATE_FORMAT, errors="coerce", utc=True
            )
            stamps = parsed.where(parsed.notna(), stamps)
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise E2URecError(
            f"{path}: record {row + 1}: no date_updated or date_added like "
            f"'Sun Jul 30 07:44:10 -0700 2017'"
        )
    return (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


@READERS.register(
    "goodreads",
    description="GoodReads (UCSD Book Graph): interactions JSON lines or CSV + books JSON lines",
    source="UCSD Book Graph",
)
def read_goodreads(folder: Path | None) -> RatingLog:
    """GoodReads in the UCSD Book Graph format.

    Files looked for in the folder (each may be gzipped, `.gz`; exactly one of each kind):
      interactions: `goodreads_interactions*.json[.gz]` (JSON lines: user_id, book_id, rating,
                    date_added, date_updated), else `goodreads_interactions*.csv[.gz]` (header
                    user_id,book_id,is_read,rating,...; no dates, so the line order is the time).
      books:        `goodreads_books*.json[.gz]` (JSON lines: book_id, title).
      book_id_map.csv (optional, with the CSV): book_id_csv,book_id to join CSV ids to the books.
    Rating 0 means "not rated" and is dropped; ratings of books without a title are dropped.
    Timestamps are `date_updated` (the last change, when the rating was set), else `date_added`.
    User and book ids (strings) become ints 0.. in sorted order of the original ids.
    """
    folder = dataset_folder(folder, "goodreads")
    path = find_one(
        folder,
        [f"goodreads_interactions*.{ext}" for ext in ("json.gz", "json", "csv.gz", "csv")],
        "interactions",
    )
    if ".json" in path.name:
        frame = read_json_lines(
            path, ["user_id", "book_id", "rating", "date_added", "date_updated"]
        )
        frame["timestamp"] = goodreads_timestamps(path, frame)
        skip = 0
    else:
        frame = read_csv_with_header(path, ["user_id", "book_id", "rating"], {})
        frame["timestamp"] = np.arange(len(frame), dtype="int64")
        map_path = folder / "book_id_map.csv"
        if map_path.is_file():
            id_map = read_csv_with_header(map_path, ["book_id_csv", "book_id"], {})
            frame["book_id"] = frame["book_id"].map(
                dict(zip(id_map.book_id_csv, id_map.book_id, strict=True))
            )
        skip = 1
    for column in ("user_id", "book_id"):
        missing = frame[column].isna().to_numpy() | (frame[column].astype(str) == "").to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise E2URecError(f"{path}: line {row + 1 + skip}: no {column}")
        frame[column] = frame[column].astype(str)
    convert_columns(path, frame, {"rating": "float64"}, skip=skip)
    check_ratings(path, frame, 0, 5, skip=skip)
    frame = frame[frame["rating"] > 0]

    books_path = find_one(
        folder, [f"goodreads_books*.{ext}" for ext in ("json.gz", "json")], "books"
    )
    books = read_json_lines(books_path, ["book_id", "title"]).dropna()
    books = books.astype(str).drop_duplicates("book_id")
    frame = frame[frame["book_id"].isin(books["book_id"])]
    if frame.empty:
        raise E2URecError(
            f"{path}: no rated interactions (rating 1..5) with a book in {books_path}"
        )

    user_codes, _ = pd.factorize(frame["user_id"], sort=True)
    item_codes, book_ids = pd.factorize(frame["book_id"], sort=True)
    ratings = pd.DataFrame(
        {
            "user_id": user_codes.astype("int64"),
            "item_id": item_codes.astype("int64"),
            "rating": frame["rating"].to_numpy(),
            "timestamp": frame["timestamp"].to_numpy().astype("int64"),
        }
    )
    titles = books.set_index("book_id")["title"]
    items = pd.DataFrame(
        {
            "item_id": np.arange(len(book_ids), dtype="int64"),
            "title": titles.loc[book_ids].to_numpy(),
        }
    )
    items["title"] = items["title"].astype(str)
    return RatingLog(ratings, items, None, domain="books").validate(str(folder))


@READERS.register(
    "synthetic",
    description="Seeded synthetic MovieLens-1M-format data; `e2urec data synthesize`",
    source="generated",
)
def read_synthetic(folder: Path | None) -> RatingLog:
    """With no folder, a small generated data set; with a folder, its ML-1M-format files."""
    if folder is None:
        return generate(**DEFAULT_SIZE)
    return read_ml1m(folder)
