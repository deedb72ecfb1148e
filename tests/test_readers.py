"""Dataset readers and the synthetic generator: fixtures written here in the official formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from e2urec.cli import main
from e2urec.data.readers import READERS
from e2urec.data.schema import ML1M_AGES, ML1M_OCCUPATIONS
from e2urec.data.synthetic import generate, write_ml1m
from e2urec.errors import E2URecError

ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
ML1M_MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
    '3::Café au lait, "Métisse" (1993)::Comedy\n'
)
ML1M_RATINGS = "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n3::3::1::978300275\n"


def write_ml1m_fixture(folder: Path, **override: str) -> Path:
    files = {"users.dat": ML1M_USERS, "movies.dat": ML1M_MOVIES, "ratings.dat": ML1M_RATINGS}
    files.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    return folder


MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    '31,"Dangerous Minds ""Special"" (1995)",Drama\n'
)
RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,0.5,964981247\n2,31,3.5,964982224\n"
)


def write_csv_fixture(folder: Path, **override: str) -> Path:
    files = {"movies.csv": MOVIES_CSV, "ratings.csv": RATINGS_CSV}
    files.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def json_lines(records: list[dict], path: Path) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


INTERACTIONS = [
    {
        "user_id": "8842281e1d1347389f2ab93d60773d4d",
        "book_id": "24375664",
        "review_id": "5cd4",
        "is_read": True,
        "rating": 5,
        "date_added": "Mon Aug 28 09:22:28 -0700 2017",
        "date_updated": "Mon Aug 28 09:25:21 -0700 2017",
    },
    {
        "user_id": "8842281e1d1347389f2ab93d60773d4d",
        "book_id": "18245960",
        "is_read": False,
        "rating": 0,
        "date_added": "Sun Jul 30 07:44:10 -0700 2017",
        "date_updated": "Sun Jul 30 07:44:10 -0700 2017",
    },
    {
        "user_id": "01ec1a320ffded6b2dd47833f2c8e4fb",
        "book_id": "18245960",
        "is_read": True,
        "rating": 3,
        "date_added": "Sun Jul 30 07:44:10 -0700 2017",
        "date_updated": "",
    },
]
BOOKS = [
    {"book_id": "24375664", "title": "The Hidden Oracle (The Trials of Apollo, #1)", "isbn": ""},
    {"book_id": "18245960", "title": "The Three-Body Problem", "isbn": "0765377063"},
]


def write_goodreads_fixture(folder: Path, interactions=INTERACTIONS, books=BOOKS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    json_lines(interactions, folder / "goodreads_interactions_poetry.json.gz")
    json_lines(books, folder / "goodreads_books_poetry.json.gz")
    return folder


# ---------------------------------------------------------------- ml-100k
def test_ml100k_real_copy(ml100k_dir):
    log = READERS.get("ml-100k")(ml100k_dir)
    assert log.ratings["user_id"].nunique() == 943
    assert log.ratings["item_id"].nunique() == 1682
    assert len(log.ratings) == 100_000
    assert len(log.items) == 1682 and len(log.users) == 943
    assert set(log.users["gender"]) == {"male", "female"}
    assert log.items.set_index("item_id").loc[1, "title"] == "Toy Story (1995)"


# ---------------------------------------------------------------- ml-1m
def test_ml1m_reads_official_format_and_labels(tmp_path):
    log = READERS.get("ml-1m")(write_ml1m_fixture(tmp_path / "ml"))
    assert log.domain == "movies"
    assert log.ratings.dtypes.to_dict() == {
        "user_id": np.dtype("int64"),
        "item_id": np.dtype("int64"),
        "rating": np.dtype("float64"),
        "timestamp": np.dtype("int64"),
    }
    assert log.ratings["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    titles = log.items.set_index("item_id")["title"]
    assert titles[2] == "Star Wars: Episode IV - A New Hope (1977)"
    assert titles[3] == 'Café au lait, "Métisse" (1993)'
    assert log.items.set_index("item_id").loc[1, "genres"] == "Animation|Children's|Comedy"
    users = log.users.set_index("user_id")
    assert users.loc[1].tolist() == ["female", "Under 18", "K-12 student"]
    assert users.loc[2].tolist() == ["male", "56+", "self-employed"]
    assert users.loc[3].tolist() == ["male", "25-34", "scientist"]


def test_ml1m_label_tables_are_the_official_ones():
    assert ML1M_AGES == {
        1: "Under 18",
        18: "18-24",
        25: "25-34",
        35: "35-44",
        45: "45-49",
        50: "50-55",
        56: "56+",
    }
    assert len(ML1M_OCCUPATIONS) == 21 and sorted(ML1M_OCCUPATIONS) == list(range(21))
    assert ML1M_OCCUPATIONS[0] == "other"
    assert ML1M_OCCUPATIONS[4] == "college/grad student"
    assert ML1M_OCCUPATIONS[10] == "K-12 student"
    assert ML1M_OCCUPATIONS[17] == "technician/engineer"
    assert ML1M_OCCUPATIONS[20] == "writer"


@pytest.mark.parametrize(
    ("override", "bad_file", "words"),
    [
        ({"ratings.dat": ""}, "ratings.dat", "empty file"),
        ({"ratings.dat": "1,1,5,978300760\n"}, "ratings.dat", "'::'-separated"),
        ({"ratings.dat": "1::1::5\n"}, "ratings.dat", "expected 4"),
        ({"ratings.dat": "1::1::5::978300760::9\n"}, "ratings.dat", "expected 4"),
        ({"ratings.dat": "1::1::5::978300760\n1::2::five::978300761\n"}, "ratings.dat", "line 2"),
        ({"ratings.dat": "1::1::5::978300760\n1::2::6::978300761\n"}, "ratings.dat", "outside"),
        ({"ratings.dat": "1::1::0::978300760\n"}, "ratings.dat", "outside [1, 5]"),
        ({"users.dat": "1::F::7::10::48067\n"}, "users.dat", "unknown age code"),
        ({"users.dat": "1::F::1::21::48067\n"}, "users.dat", "unknown job code"),
        ({"users.dat": "1::X::1::10::48067\n"}, "users.dat", "unknown gender code"),
        ({"movies.dat": "1|Toy Story (1995)|Animation\n"}, "movies.dat", "expected 3"),
    ],
)
def test_ml1m_bad_input_is_one_clear_error(tmp_path, override, bad_file, words):
    folder = write_ml1m_fixture(tmp_path / "ml", **override)
    with pytest.raises(E2URecError) as info:
        READERS.get("ml-1m")(folder)
    message = str(info.value)
    assert str(folder / bad_file) in message and words in message
    assert "\n" not in message


def test_ml1m_missing_file_and_folder(tmp_path):
    folder = write_ml1m_fixture(tmp_path / "ml")
    (folder / "users.dat").unlink()
    with pytest.raises(E2URecError, match=r"missing file .*users\.dat"):
        READERS.get("ml-1m")(folder)
    with pytest.raises(E2URecError, match="folder not found"):
        READERS.get("ml-1m")(tmp_path / "nowhere")


def test_ml1m_without_folder_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(E2URecError, match="e2urec data fetch ml-1m"):
        READERS.get("ml-1m")(None)
    write_ml1m_fixture(tmp_path / "cache" / "ml-1m")
    assert len(READERS.get("ml-1m")(None).ratings) == 4


def test_million_ratings_round_trip(tmp_path):
    """A million ratings generate, write and read back whole; their speed is measured by
    benchmarks/bench_prepare.py, not asserted here (a wall-clock bound fails on a busy machine)."""
    log = generate(6000, 3700, 1_000_000, seed=1)
    write_ml1m(log, tmp_path / "big")
    back = READERS.get("ml-1m")(tmp_path / "big")
    assert len(back.ratings) == 1_000_000
    assert back.ratings["rating"].sum() == log.ratings["rating"].sum()


# ---------------------------------------------------------------- movielens-csv
def test_movielens_csv_quoted_titles_and_half_stars(tmp_path):
    log = READERS.get("movielens-csv")(write_csv_fixture(tmp_path / "latest"))
    assert log.users is None and log.domain == "movies"
    assert log.ratings["rating"].tolist() == [4.0, 0.5, 3.5]
    assert log.ratings["user_id"].tolist() == [1, 1, 2]
    titles = log.items.set_index("item_id")["title"]
    assert titles[11] == "American President, The (1995)"
    assert titles[31] == 'Dangerous Minds "Special" (1995)'


@pytest.mark.parametrize(
    ("override", "bad_file", "words"),
    [
        ({"ratings.csv": ""}, "ratings.csv", "empty file"),
        ({"ratings.csv": "userId,movieId,rating,timestamp\n"}, "ratings.csv", "header only"),
        (
            {"ratings.csv": "userId\tmovieId\trating\ttimestamp\n1\t1\t4\t9\n"},
            "ratings.csv",
            "lacks",
        ),
        ({"ratings.csv": "userId,movieId,rating,timestamp\n1,1,x,9\n"}, "ratings.csv", "line 2"),
        ({"ratings.csv": "userId,movieId,rating,timestamp\n1,1,5.5,9\n"}, "ratings.csv", "outside"),
        ({"ratings.csv": "userId,movieId,rating,timestamp\n1,1,0,9\n"}, "ratings.csv", "outside"),
        ({"movies.csv": "movieId,name\n1,Toy Story\n"}, "movies.csv", "lacks column(s) title"),
    ],
)
def test_movielens_csv_bad_input(tmp_path, override, bad_file, words):
    folder = write_csv_fixture(tmp_path / "latest", **override)
    with pytest.raises(E2URecError) as info:
        READERS.get("movielens-csv")(folder)
    assert str(folder / bad_file) in str(info.value) and words in str(info.value)


def test_movielens_csv_missing_file(tmp_path):
    folder = write_csv_fixture(tmp_path / "latest")
    (folder / "movies.csv").unlink()
    with pytest.raises(E2URecError, match=r"missing file .*movies\.csv"):
        READERS.get("movielens-csv")(folder)
    with pytest.raises(E2URecError, match="no folder given"):
        READERS.get("movielens-csv")(None)


# ---------------------------------------------------------------- goodreads
def test_goodreads_gzipped_json_lines(tmp_path):
    log = READERS.get("goodreads")(write_goodreads_fixture(tmp_path / "gr"))
    assert log.domain == "books" and log.users is None
    assert len(log.ratings) == 2  # the rating-0 interaction is dropped
    # ids are mapped to ints in sorted order of the original strings
    assert log.ratings["user_id"].tolist() == [1, 0]
    assert log.ratings["item_id"].tolist() == [1, 0]
    assert log.ratings["rating"].tolist() == [5.0, 3.0]
    titles = log.items.set_index("item_id")["title"]
    assert titles[0] == "The Three-Body Problem"
    assert titles[1] == "The Hidden Oracle (The Trials of Apollo, #1)"
    # date_updated (PDT, -0700) when present, date_added otherwise
    assert log.ratings["timestamp"].tolist() == [1503937521, 1501425850]


def test_goodreads_plain_json_and_csv(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    json_lines(INTERACTIONS, folder / "goodreads_interactions_comics.json")
    json_lines(BOOKS, folder / "goodreads_books_comics.json")
    assert len(READERS.get("goodreads")(folder).ratings) == 2

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "goodreads_interactions.csv").write_text(
        "user_id,book_id,is_read,rating,is_reviewed\n0,948,1,5,0\n0,947,1,0,0\n1,947,1,4,0\n"
    )
    (folder / "book_id_map.csv").write_text("book_id_csv,book_id\n947,18245960\n948,24375664\n")
    json_lines(BOOKS, folder / "goodreads_books.json.gz")
    log = READERS.get("goodreads")(folder)
    assert log.ratings["rating"].tolist() == [5.0, 4.0]
    assert log.ratings["timestamp"].tolist() == [0, 2]  # no dates: file order
    titles = log.items.set_index("item_id")["title"]
    assert titles[log.ratings["item_id"].iloc[1]] == "The Three-Body Problem"


def test_goodreads_bad_input(tmp_path):
    reader = READERS.get("goodreads")
    with pytest.raises(E2URecError, match="missing interactions file"):
        reader(tmp_path)
    folder = write_goodreads_fixture(tmp_path / "a")
    (folder / "goodreads_books_poetry.json.gz").unlink()
    with pytest.raises(E2URecError, match="missing books file"):
        reader(folder)

    bad_rating = [dict(INTERACTIONS[0], rating=7)]
    folder = write_goodreads_fixture(tmp_path / "b", interactions=bad_rating)
    with pytest.raises(
        E2URecError, match=r"goodreads_interactions_poetry\.json\.gz: line 1.*outside"
    ):
        reader(folder)

    text_rating = [dict(INTERACTIONS[0], rating="great")]
    folder = write_goodreads_fixture(tmp_path / "c", interactions=text_rating)
    with pytest.raises(E2URecError, match=r"poetry\.json\.gz: line 1: column 'rating' is not"):
        reader(folder)

    no_date = [dict(INTERACTIONS[0], date_added="yesterday", date_updated="")]
    folder = write_goodreads_fixture(tmp_path / "d", interactions=no_date)
    with pytest.raises(E2URecError, match=r"poetry\.json\.gz: record 1: no date_updated"):
        reader(folder)

    folder = write_goodreads_fixture(tmp_path / "e")
    (folder / "goodreads_interactions_poetry.json.gz").write_bytes(b"not gzip")
    with pytest.raises(E2URecError, match=r"poetry\.json\.gz: cannot read"):
        reader(folder)

    folder = write_goodreads_fixture(tmp_path / "f")
    (folder / "goodreads_books_poetry.json.gz").unlink()
    (folder / "goodreads_books_poetry.json").write_text('{"book_id": "1", "title": "x"}\n[1,\n')
    with pytest.raises(E2URecError, match=r"goodreads_books_poetry\.json: line 2: not a JSON"):
        reader(folder)

    folder = write_goodreads_fixture(tmp_path / "g")
    json_lines(BOOKS, folder / "goodreads_books_children.json.gz")
    with pytest.raises(E2URecError, match="several books files"):
        reader(folder)

    unrated = [dict(INTERACTIONS[1])]
    folder = write_goodreads_fixture(tmp_path / "h", interactions=unrated)
    with pytest.raises(E2URecError, match="no rated interactions"):
        reader(folder)


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_round_trips(tmp_path):
    first = generate(50, 40, 1_000, seed=3)
    second = generate(50, 40, 1_000, seed=3)
    other = generate(50, 40, 1_000, seed=4)
    for name in ("ratings", "items", "users"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert not first.ratings.equals(other.ratings)

    write_ml1m(first, tmp_path / "syn")
    for reader in ("ml-1m", "synthetic"):
        back = READERS.get(reader)(tmp_path / "syn")
        for name in ("ratings", "items", "users"):
            pd.testing.assert_frame_equal(getattr(first, name), getattr(back, name))


def test_synthetic_shape_and_structure():
    log = generate(200, 150, 6_000, seed=0)
    ratings = log.ratings
    assert len(ratings) == 6_000
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    assert set(ratings["rating"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert log.items["title"].is_unique
    assert log.items["title"].str.match(r"^.+ \(\d{4}\)$").all()
    assert set(log.users["age"]) <= set(ML1M_AGES.values())
    assert set(log.users["job"]) <= set(ML1M_OCCUPATIONS.values())
    # timestamps strictly increase within each user
    assert (ratings.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    # real signal: an item's mean rating on half the users predicts it on the other half
    half = ratings["user_id"] % 2 == 0
    means = pd.concat(
        [
            ratings[half].groupby("item_id")["rating"].mean(),
            ratings[~half].groupby("item_id")["rating"].mean(),
        ],
        axis=1,
    ).dropna()
    assert means.corr().iloc[0, 1] > 0.5


def test_synthetic_default_and_bad_sizes():
    log = READERS.get("synthetic")(None)
    assert (len(log.users), len(log.items), len(log.ratings)) == (600, 400, 30_000)
    with pytest.raises(E2URecError, match="exceed"):
        generate(2, 2, 5, seed=0)
    with pytest.raises(E2URecError, match="at least 1"):
        generate(0, 2, 1, seed=0)


def test_synthetic_dense_request_is_exact():
    log = generate(10, 10, 100, seed=0)
    assert len(log.ratings) == 100 and not log.ratings.duplicated(["user_id", "item_id"]).any()


def test_write_ml1m_refuses_what_the_format_cannot_hold(tmp_path):
    log = READERS.get("movielens-csv")(write_csv_fixture(tmp_path / "latest"))
    with pytest.raises(E2URecError, match="no user profiles"):
        write_ml1m(log, tmp_path / "out")
    small = generate(5, 5, 10, seed=0)
    small.ratings.loc[0, "rating"] = 3.5
    with pytest.raises(E2URecError, match="whole stars"):
        write_ml1m(small, tmp_path / "out")


def test_cli_synthesize(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["data", "synthesize", "--out", str(out), "--users", "30", "--items", "20"]
    assert main([*args, "--ratings", "300", "--seed", "5"]) == 0
    assert "wrote" in capsys.readouterr().out
    log = READERS.get("ml-1m")(out)
    pd.testing.assert_frame_equal(log.ratings, generate(30, 20, 300, seed=5).ratings)
    assert main([*args, "--ratings", "300"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--ratings", "300", "--overwrite"]) == 0
    assert (
        main(
            [
                "data",
                "synthesize",
                "--out",
                str(tmp_path / "x"),
                "--users",
                "1",
                "--items",
                "1",
                "--ratings",
                "5",
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]
