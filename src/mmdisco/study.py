"""``mmdisco study``: the paper's A/B listening study (appendix A.11), blind and crash-safe.

A study is one SQLite file (WAL mode) holding everything:

* ``pairs``: the clips of system A and system B for one item (the same seed unguided and
  guided, or the files of the same name in any two folders);
* ``listeners``: invited listeners, each with a secret participant token (the link they get);
* ``trials``: per listener, the order of the pairs and which system plays on the left,
  drawn from the study's seed when the listener is invited and recorded before any answer;
* ``answers``: one row per listener, pair and question (``left``, ``right`` or ``none`` for
  no preference, and the system that choice means). A listener's answers to one pair are
  written in one transaction, and the table's key refuses a second vote on a pair.

The page never names a system or a file: clips are served under opaque ids, and only the
recorded side tells which is which. By default the page accepts an answer only once both
clips have been played to the end. :func:`export` gives, per question, the win rate of B
over A among the answers that preferred one (ties excluded), with a Wilson score 95 %
interval and an exact two-sided binomial test against 0.5, the shares of all answers as the
paper's Table 14 reports them, and the same per listener and per pair; :func:`answer_rows`
gives the raw answers, one row per listener, pair and question (:func:`answers_csv`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from mmdisco.errors import InputError

QUESTIONS = {
    "alignment": "In which clip do the sound and the picture belong together better "
    "(what you hear matches what you see, and when it happens)?",
    "quality": "Which clip has the better quality overall, picture and sound?",
}
CHOICES = ("left", "right", "none")
CONFIDENCE = 0.95
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile, for the 95 % interval
DEFAULT_URL = "http://127.0.0.1:8000"  # where `mmdisco study serve` listens by default
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    path_a TEXT NOT NULL, path_b TEXT NOT NULL,
    clip_a TEXT UNIQUE NOT NULL, clip_b TEXT UNIQUE NOT NULL  -- opaque ids in clip URLs
);
CREATE TABLE listeners (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, token TEXT UNIQUE NOT NULL,
    invited_at TEXT NOT NULL
);
CREATE TABLE trials (
    listener INTEGER NOT NULL REFERENCES listeners(id),
    position INTEGER NOT NULL,
    pair INTEGER NOT NULL REFERENCES pairs(id),
    left_system TEXT NOT NULL CHECK (left_system IN ('a', 'b')),
    PRIMARY KEY (listener, position), UNIQUE (listener, pair)
);
CREATE TABLE answers (
    listener INTEGER NOT NULL REFERENCES listeners(id),
    pair INTEGER NOT NULL REFERENCES pairs(id),
    question TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'none')),
    winner TEXT CHECK (winner IN ('a', 'b')),
    left_system TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (listener, pair, question)
);
"""


class StudyError(InputError):
    """A request or a study set-up that cannot be honoured; the message says why."""


@dataclass
class Invitation:
    name: str
    token: str

    def link(self, base_url: str = DEFAULT_URL) -> str:
        """The address this listener opens: the server's, with their secret token."""
        return f"{base_url.rstrip('/')}/?token={self.token}"


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------


@contextmanager
def connect(db: str | os.PathLike) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (transactions are explicit), closed on exit."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30.0)
    try:
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")  # a committed answer is on disk
            conn.execute("SELECT name FROM sqlite_master LIMIT 1")  # reads the header
        except sqlite3.DatabaseError as err:
            raise StudyError(f"{db}: not a study file ({err})") from None
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def match_folders(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(name, path_a, path_b)`` for every mp4 present in both folders under one name."""
    found = []
    for folder in (Path(a), Path(b)):
        if not folder.is_dir():
            raise StudyError(f"no such folder of clips: {folder}")
        names = {p.stem: p.resolve() for p in sorted(folder.glob("*.mp4"))}
        if not names:
            raise StudyError(f"{folder} holds no .mp4 clips")
        found.append(names)
    only = sorted(set(found[0]) ^ set(found[1]))
    if only:
        raise StudyError(
            f"the clips of {a} and {b} must pair up by file name; unmatched: "
            + ", ".join(f"{n}.mp4" for n in only[:10])
        )
    return [(n, found[0][n], found[1][n]) for n in sorted(found[0])]


def create_study(
    db: str | os.PathLike,
    pairs: list[tuple[str, Path, Path]],
    name_a: str = "A",
    name_b: str = "B",
    questions: tuple[str, ...] = ("alignment",),
    seed: int = 0,
    *,
    require_play: bool = True,
) -> None:
    """A new study file with its pairs (no listener yet: :func:`invite`); ``require_play``:
    the page takes an answer only once both clips have been played to the end."""
    db = Path(db)
    if db.exists():
        raise StudyError(f"{db} already exists; invite more listeners with `mmdisco study invite`")
    unknown = [q for q in questions if q not in QUESTIONS]
    if unknown or not questions:
        raise StudyError(f"questions must be among {sorted(QUESTIONS)}, got {list(questions)}")
    if not pairs:
        raise StudyError("a study needs at least one pair of clips")
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.creating")
    tmp.unlink(missing_ok=True)
    with connect(tmp) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)
        with transaction(conn):
            meta = {
                "name_a": name_a,
                "name_b": name_b,
                "questions": json.dumps(list(questions)),
                "seed": str(seed),
                "require_play": json.dumps(require_play),
                "created_at": _now(),
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            conn.executemany(
                "INSERT INTO pairs (name, path_a, path_b, clip_a, clip_b) VALUES (?, ?, ?, ?, ?)",
                [
                    (n, str(pa), str(pb), secrets.token_urlsafe(12), secrets.token_urlsafe(12))
                    for n, pa, pb in pairs
                ],
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(tmp, db)  # the study appears whole or not at all


def invite(
    db: str | os.PathLike, count: int = 1, names: list[str] | None = None
) -> list[Invitation]:
    """Add listeners, each with a secret token and a recorded random order and sides."""
    names = list(names or [])
    if count < len(names):
        count = len(names)
    if count < 1:
        raise StudyError(f"invite at least one listener, got {count}")
    out = []
    with connect(_existing(db)) as conn, transaction(conn):
        seed = int(_meta(conn)["seed"])
        pair_ids = [r[0] for r in conn.execute("SELECT id FROM pairs ORDER BY id")]
        start = conn.execute("SELECT COALESCE(MAX(id), 0) FROM listeners").fetchone()[0]
        for k in range(count):
            index = start + k + 1
            name = names[k] if k < len(names) else f"listener-{index:03d}"
            token = secrets.token_urlsafe(16)  # a credential: unguessable, so not seeded
            try:
                cur = conn.execute(
                    "INSERT INTO listeners (name, token, invited_at) VALUES (?, ?, ?)",
                    (name, token, _now()),
                )
            except sqlite3.IntegrityError:
                raise StudyError(f"a listener named {name!r} is already invited") from None
            rng = random.Random(f"{seed}:{index}")
            order = rng.sample(pair_ids, len(pair_ids))
            conn.executemany(
                "INSERT INTO trials VALUES (?, ?, ?, ?)",
                [(cur.lastrowid, i, p, rng.choice("ab")) for i, p in enumerate(order)],
            )
            out.append(Invitation(name, token))
    return out


def invitations(db: str | os.PathLike) -> list[Invitation]:
    """Every invited listener, in the order invited."""
    with connect(_existing(db)) as conn:
        rows = conn.execute("SELECT name, token FROM listeners ORDER BY id").fetchall()
    return [Invitation(name, token) for name, token in rows]


def _existing(db: str | os.PathLike) -> Path:
    db = Path(db)
    if not db.is_file():
        raise StudyError(f"no such study: {db} (create one with `mmdisco study create`)")
    return db


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as err:
        raise StudyError(f"not an mmdisco study database ({err})") from None


def listener_id(conn: sqlite3.Connection, token: str | None) -> int:
    row = conn.execute("SELECT id FROM listeners WHERE token = ?", (token or "",)).fetchone()
    if row is None:
        raise PermissionError("this study is by invitation: open the link you were given")
    return row[0]


def next_trial(conn: sqlite3.Connection, listener: int) -> dict[str, Any]:
    """The listener's first unanswered pair, as the page shows it (no system names)."""
    total = conn.execute("SELECT COUNT(*) FROM trials WHERE listener = ?", (listener,)).fetchone()
    row = conn.execute(
        """SELECT t.position, t.left_system, p.clip_a, p.clip_b FROM trials t
           JOIN pairs p ON p.id = t.pair
           WHERE t.listener = ? AND NOT EXISTS
             (SELECT 1 FROM answers a WHERE a.listener = t.listener AND a.pair = t.pair)
           ORDER BY t.position LIMIT 1""",
        (listener,),
    ).fetchone()
    meta = _meta(conn)
    questions = json.loads(meta["questions"])
    state: dict[str, Any] = {"total": total[0], "questions": []}
    if row is None:
        return {**state, "done": True, "position": total[0]}
    position, left, clip_a, clip_b = row
    clips = (clip_a, clip_b) if left == "a" else (clip_b, clip_a)
    return {
        **state,
        "done": False,
        "position": position,
        "left": f"/clip/{clips[0]}",
        "right": f"/clip/{clips[1]}",
        "questions": [{"key": q, "text": QUESTIONS[q]} for q in questions],
        "require_play": requires_play(meta),
    }


def requires_play(meta: dict[str, str]) -> bool:
    """Whether answers wait until both clips were played (studies made before the option:
    yes)."""
    return json.loads(meta.get("require_play", "true"))


def record_answer(conn: sqlite3.Connection, listener: int, position: Any, choices: Any) -> None:
    """Store one listener's answers to one pair, all questions in one transaction."""
    if not isinstance(choices, dict):
        raise StudyError("answers must be an object of question: choice")
    with transaction(conn):
        row = conn.execute(
            "SELECT pair, left_system FROM trials WHERE listener = ? AND position = ?",
            (listener, position),
        ).fetchone()
        if row is None:
            raise StudyError(f"no pair at position {position!r} for this listener")
        pair, left = row
        questions = json.loads(_meta(conn)["questions"])
        if sorted(choices) != sorted(questions):
            raise StudyError(f"answer every question of this study: {questions}")
        bad = {q: c for q, c in choices.items() if c not in CHOICES}
        if bad:
            raise StudyError(f"choices must be one of {list(CHOICES)}, got {bad}")
        right = "b" if left == "a" else "a"
        winners = {"left": left, "right": right, "none": None}
        try:
            conn.executemany(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(listener, pair, q, c, winners[c], left, _now()) for q, c in choices.items()],
            )
        except sqlite3.IntegrityError:
            raise FileExistsError("You have already answered this pair (in another tab?)") from None


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    p, n = successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def binomial_p_value(successes: int, trials: int) -> float:
    """The exact two-sided binomial test against 0.5: the probability, under a fair coin, of
    a count at least as far from n/2 as this one (the distribution is symmetric, so twice the
    nearer tail), computed in integers."""
    tail = min(successes, trials - successes)
    if 2 * tail == trials:
        return 1.0
    return min(1.0, 2 * sum(math.comb(trials, k) for k in range(tail + 1)) / 2**trials)


def win_rate(wins_b: int, wins_a: int, ties: int = 0) -> dict[str, Any]:
    """B's win rate over A among decided answers, its Wilson score interval and the exact
    two-sided binomial p-value against 0.5; and the shares of all answers."""
    decided, total = wins_a + wins_b, wins_a + wins_b + ties
    out: dict[str, Any] = {"wins_a": wins_a, "wins_b": wins_b, "ties": ties, "answers": total}
    if decided:
        low, high = wilson_interval(wins_b, decided)
        out |= {
            "win_rate_b": wins_b / decided,
            "ci_low": low,
            "ci_high": high,
            "p_value": binomial_p_value(wins_b, decided),
        }
    else:
        out |= {"win_rate_b": None, "ci_low": None, "ci_high": None, "p_value": None}
    if total:
        out |= {"share_a": wins_a / total, "share_b": wins_b / total, "share_none": ties / total}
    return out


ANSWER_COLUMNS = (
    "listener",
    "pair",
    "question",
    "choice",
    "left_system",
    "winner",
    "winner_name",
    "answered_at",
)


def answer_rows(db: str | os.PathLike) -> list[dict[str, Any]]:
    """Every answer, one row per listener, pair and question, in the order given: the
    choice as the listener saw it (left, right, none), the system on the left, and the
    system the choice means (``winner``: a, b or empty; ``winner_name``: its name)."""
    with connect(_existing(db)) as conn:
        meta = _meta(conn)
        rows = conn.execute(
            """SELECT l.name, p.name, a.question, a.choice, a.left_system, a.winner,
                      a.answered_at
               FROM answers a JOIN listeners l ON l.id = a.listener
               JOIN pairs p ON p.id = a.pair
               ORDER BY a.answered_at, l.id, p.id, a.question"""
        ).fetchall()
    names = {"a": meta["name_a"], "b": meta["name_b"], None: ""}
    columns = ANSWER_COLUMNS[:6]
    return [
        {
            **dict(zip(columns, row[:6], strict=True)),
            "winner_name": names[row[5]],
            "answered_at": row[6],
        }
        for row in rows
    ]


def answers_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` of :func:`answer_rows` as CSV text with a header line."""
    text = io.StringIO()
    writer = csv.DictWriter(text, ANSWER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return text.getvalue()


def export(db: str | os.PathLike) -> dict[str, Any]:
    """Win rates per question, overall, per listener and per pair (see the module doc)."""
    with connect(_existing(db)) as conn:
        meta = _meta(conn)
        rows = conn.execute(
            """SELECT l.name, p.name, a.question, a.winner FROM answers a
               JOIN listeners l ON l.id = a.listener JOIN pairs p ON p.id = a.pair"""
        ).fetchall()
        invited = conn.execute("SELECT COUNT(*) FROM listeners").fetchone()[0]
        n_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]

    def tally(selected: list[tuple]) -> dict[str, Any]:
        winners = [r[3] for r in selected]
        return win_rate(winners.count("b"), winners.count("a"), winners.count(None))

    result: dict[str, Any] = {
        "systems": {"a": meta["name_a"], "b": meta["name_b"]},
        "interval": f"Wilson score, {CONFIDENCE:.0%}, on B's wins among answers with a "
        "preference; p: exact two-sided binomial test against 0.5",
        "listeners": len(_names(rows, 0)),  # those who answered at least once
        "invited": invited,
        "pairs": n_pairs,
        "answers": len(rows),
        "require_play": requires_play(meta),
        "questions": {},
    }
    for q in json.loads(meta["questions"]):
        mine = [r for r in rows if r[2] == q]
        result["questions"][q] = {
            "text": QUESTIONS[q],
            "overall": tally(mine),
            "per_listener": {n: tally([r for r in mine if r[0] == n]) for n in _names(mine, 0)},
            "per_pair": {n: tally([r for r in mine if r[1] == n]) for n in _names(mine, 1)},
        }
    return result


def _names(rows: list[tuple], column: int) -> list[str]:
    return sorted({r[column] for r in rows})


def render_markdown(result: dict[str, Any]) -> str:
    a, b = result["systems"]["a"], result["systems"]["b"]
    answered, invited = result["listeners"], result["invited"]
    lines = [
        f"# A/B study: {b} (B) against {a} (A)",
        "",
        f"{answered} of {invited} invited listener{'s' if invited != 1 else ''} answered; "
        f"{result['pairs']} pairs. Interval: {result['interval']}.",
        "",
        f"| question | answers | {a} | {b} | no preference | win rate of {b} | 95 % CI | p |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for q, r in result["questions"].items():
        o = r["overall"]
        if not o["answers"]:
            lines.append(f"| {q} | 0 | | | | | | |")
            continue
        rate = "n/a" if o["win_rate_b"] is None else f"{o['win_rate_b']:.3f}"
        ci = "n/a" if o["ci_low"] is None else f"[{o['ci_low']:.3f}, {o['ci_high']:.3f}]"
        p = "n/a" if o["p_value"] is None else f"{o['p_value']:.3g}"
        lines.append(
            f"| {q} | {o['answers']} | {o['share_a']:.1%} | {o['share_b']:.1%} | "
            f"{o['share_none']:.1%} | {rate} | {ci} | {p} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent / "assets"
PAGE_FILE = ASSETS / "study.html"
STYLE_FILE = ASSETS / "study.css"
REFUSAL_BODY = """<body>
<h1>Listening study</h1>
<p id="message" class="notice">{message}</p>
</body>
</html>
"""


class StudyServer(ThreadingHTTPServer):
    """Serves the listening page, its clips and its small JSON API for one study file."""

    daemon_threads = True

    def __init__(self, db: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.db = _existing(db)
        with connect(self.db) as conn:
            _meta(conn)
        self.page = PAGE_FILE.read_bytes()
        # A refused page wears the study page's head (title, style), written once in the asset.
        self.page_head = self.page.split(b"<body>", 1)[0]
        self.style = STYLE_FILE.read_bytes()
        super().__init__((host, port), StudyHandler)


class StudyHandler(BaseHTTPRequestHandler):
    """Routes: ``/study.css`` and ``/favicon.ico`` (public); ``/`` (the page), ``/clip/ID``
    and ``/api/next`` (with the listener's token); ``POST /api/answer``."""

    server: StudyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tokens are in the URLs
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/study.css":
            self._send(HTTPStatus.OK, self.server.style, "text/css")
            return
        if url.path == "/favicon.ico":  # the pages declare none; nothing to refuse
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        token = parse_qs(url.query).get("token", [None])[0]
        try:
            with connect(self.server.db) as conn:
                listener = listener_id(conn, token)
                if url.path == "/":
                    self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
                elif url.path == "/api/next":
                    self._json(HTTPStatus.OK, next_trial(conn, listener))
                elif m := re.fullmatch(r"/clip/([\w-]+)", url.path):
                    self._clip(conn, listener, m.group(1))
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})
        except PermissionError as err:
            if url.path.startswith("/api/"):
                self._json(HTTPStatus.FORBIDDEN, {"error": str(err)})
            else:  # a page or a clip opened in the browser: say it in a page
                message = str(err)
                body = REFUSAL_BODY.format(
                    message=html.escape(f"{message[:1].upper()}{message[1:]}.")
                )
                page = self.server.page_head + body.encode()
                self._send(HTTPStatus.FORBIDDEN, page, "text/html; charset=utf-8")

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path != "/api/answer":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, 1 << 16)) or b"{}")
            if not isinstance(body, dict):
                raise StudyError("send a JSON object")
            with connect(self.server.db) as conn:
                listener = listener_id(conn, body.get("token"))
                try:
                    record_answer(conn, listener, body.get("position"), body.get("answers"))
                except FileExistsError as err:  # a stale tab: the page goes on from here
                    state = {"error": str(err), "next": next_trial(conn, listener)}
                    self._json(HTTPStatus.CONFLICT, state)
                    return
                self._json(HTTPStatus.OK, next_trial(conn, listener))
        except PermissionError as err:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(err)})
        except (StudyError, json.JSONDecodeError, ValueError) as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})

    def _clip(self, conn: sqlite3.Connection, listener: int, clip: str) -> None:
        row = conn.execute(
            """SELECT CASE WHEN p.clip_a = ? THEN p.path_a ELSE p.path_b END FROM pairs p
               JOIN trials t ON t.pair = p.id AND t.listener = ?
               WHERE p.clip_a = ? OR p.clip_b = ?""",
            (clip, listener, clip, clip),
        ).fetchone()
        if row is None or not Path(row[0]).is_file():
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such clip"})
            return
        data = Path(row[0]).read_bytes()
        start, end = 0, len(data) - 1
        status = HTTPStatus.OK
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), end) if m.group(2) else end
            elif m.group(2):  # the last N bytes
                start = max(len(data) - int(m.group(2)), 0)
            if start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
        if status == HTTPStatus.PARTIAL_CONTENT:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, data[start : end + 1], "video/mp4", headers)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(
        self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
