"""The A/B study's store: pairing, invitations, one transaction per answer, export, HTTP."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mmdisco.media import write_mp4
from mmdisco.study import (
    StudyError,
    StudyServer,
    connect,
    create_study,
    export,
    invite,
    listener_id,
    match_folders,
    next_trial,
    record_answer,
    render_markdown,
)


def clips(folder: Path, names: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        frames = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
        audio = (0.2 * rng.standard_normal(8000)).astype(np.float32)
        write_mp4(folder / f"{name}.mp4", frames, 8, audio, sample_rate=16000)
    return folder


@pytest.fixture
def study(tmp_path):
    names = ["seed-0", "seed-1", "seed-2"]
    a, b = clips(tmp_path / "plain", names, 0), clips(tmp_path / "guided", names, 1)
    db = tmp_path / "study.sqlite"
    create_study(db, match_folders(a, b), "plain", "guided", ("alignment", "quality"), seed=7)
    return db


def test_folders_pair_by_file_name_or_say_what_is_unmatched(tmp_path):
    a = clips(tmp_path / "a", ["x", "y"], 0)
    b = clips(tmp_path / "b", ["x", "z"], 1)
    with pytest.raises(StudyError, match=r"must pair up by file name; unmatched: y\.mp4, z\.mp4"):
        match_folders(a, b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match=r"empty holds no \.mp4 clips"):
        match_folders(a, tmp_path / "empty")
    with pytest.raises(StudyError, match=r"no such folder of clips: .*nowhere"):
        match_folders(tmp_path / "nowhere", a)
    pairs = match_folders(a, clips(tmp_path / "c", ["y", "x"], 2))
    assert [(n, pa.name, pb.parent.name) for n, pa, pb in pairs] == [
        ("x", "x.mp4", "c"),
        ("y", "y.mp4", "c"),
    ]


def test_invitations_record_a_seeded_order_and_sides(study, tmp_path):
    with pytest.raises(StudyError, match="already exists; invite more listeners"):
        create_study(study, [("p", Path("a"), Path("b"))])
    invited = invite(study, 2, names=["ann"])
    assert [i.name for i in invited] == ["ann", "listener-002"]
    assert len({i.token for i in invited}) == 2 and all(len(i.token) >= 20 for i in invited)
    with pytest.raises(StudyError, match="a listener named 'ann' is already invited"):
        invite(study, names=["ann"])
    with connect(study) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        trials = conn.execute(
            "SELECT listener, position, pair, left_system FROM trials ORDER BY listener, position"
        ).fetchall()
    for listener in (1, 2):
        mine = [t for t in trials if t[0] == listener]
        assert sorted(t[2] for t in mine) == [1, 2, 3]  # every pair once
        assert {t[3] for t in mine} <= {"a", "b"}

    # The same seed gives the same orders and sides in another study (tokens differ).
    other = tmp_path / "other.sqlite"
    create_study(other, match_folders(tmp_path / "plain", tmp_path / "guided"), seed=7)
    invite(other, 2)
    with connect(other) as conn:
        again = conn.execute(
            "SELECT listener, position, pair, left_system FROM trials ORDER BY listener, position"
        ).fetchall()
    assert again == trials


def test_answers_are_stored_once_each_and_exported_with_wilson_intervals(study):
    ann, bob = invite(study, 2, names=["ann", "bob"])
    with connect(study) as conn:
        with pytest.raises(PermissionError, match="by invitation"):
            listener_id(conn, "not-a-token")
        a_id, b_id = listener_id(conn, ann.token), listener_id(conn, bob.token)
        sides = dict(
            ((lis, pos), left)
            for lis, pos, left in conn.execute("SELECT listener, position, left_system FROM trials")
        )

        def vote(listener, position, winner, quality="none"):
            left = sides[(listener, position)]
            choice = "none" if winner is None else ("left" if winner == left else "right")
            record_answer(conn, listener, position, {"alignment": choice, "quality": quality})

        # ann prefers B (guided) on every pair; bob prefers A once, B once, neither once.
        for position in range(3):
            vote(a_id, position, "b")
        vote(b_id, 0, "a")
        vote(b_id, 1, "b")
        vote(b_id, 2, None)
        assert next_trial(conn, a_id) == {"total": 3, "questions": [], "done": True, "position": 3}

        with pytest.raises(FileExistsError, match="already answered this pair"):
            vote(a_id, 0, "b")
        with pytest.raises(StudyError, match=r"answer every question of this study"):
            record_answer(conn, a_id, 1, {"alignment": "left"})
        with pytest.raises(StudyError, match="choices must be one of"):
            record_answer(conn, a_id, 1, {"alignment": "maybe", "quality": "none"})
        with pytest.raises(StudyError, match="no pair at position 9"):
            record_answer(conn, a_id, 9, {"alignment": "left", "quality": "none"})
        rows = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    assert rows == 12  # 6 submissions x 2 questions; the refused ones left nothing

    result = export(study)
    overall = result["questions"]["alignment"]["overall"]
    assert (overall["wins_b"], overall["wins_a"], overall["ties"]) == (4, 1, 1)
    assert overall["win_rate_b"] == pytest.approx(0.8)
    # Wilson score interval, by its formula; exact binomial p: P(X >= 4 or X <= 1), n = 5.
    n, p, z = 5, 0.8, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert overall["ci_low"] == pytest.approx(centre - half)
    assert overall["ci_high"] == pytest.approx(centre + half)
    assert overall["p_value"] == pytest.approx(12 / 32)
    assert overall["share_none"] == pytest.approx(1 / 6)
    per = result["questions"]["alignment"]["per_listener"]
    assert (per["ann"]["wins_b"], per["ann"]["wins_a"]) == (3, 0)
    assert (per["bob"]["wins_b"], per["bob"]["wins_a"], per["bob"]["ties"]) == (1, 1, 1)
    assert result["questions"]["quality"]["overall"]["win_rate_b"] is None
    assert result["systems"] == {"a": "plain", "b": "guided"} and "Wilson" in result["interval"]
    table = render_markdown(result)
    assert "| alignment | 6 | 16.7% | 66.7% | 16.7% | 0.800 |" in table


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def post(url: str, body: dict) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_serves_blind_clips_with_ranges_and_one_vote_per_pair(study):
    (ann,) = invite(study, 1)
    server = StudyServer(study, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, body, _ = get(f"{base}/")
        assert status == 403 and b"by invitation" in body
        status, body, _ = get(f"{base}/?token={ann.token}")
        assert status == 200 and b"Which clip is better?" in body
        status, body, _ = get(f"{base}/api/next?token={ann.token}")
        trial = json.loads(body)
        assert trial["position"] == 0 and trial["total"] == 3
        assert "plain" not in body.decode() and "seed-" not in body.decode()  # blind

        with connect(study) as conn:
            left_path = conn.execute(
                """SELECT CASE t.left_system WHEN 'a' THEN p.path_a ELSE p.path_b END
                   FROM trials t JOIN pairs p ON p.id = t.pair WHERE t.position = 0"""
            ).fetchone()[0]
        data = Path(left_path).read_bytes()
        status, whole, headers = get(f"{base}{trial['left']}?token={ann.token}")
        assert status == 200 and whole == data and headers["Content-Type"] == "video/mp4"
        req = urllib.request.Request(
            f"{base}{trial['left']}?token={ann.token}", headers={"Range": "bytes=10-19"}
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.read() == data[10:20]
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert get(f"{base}{trial['left']}?token=wrong")[0] == 403
        assert get(f"{base}/clip/unknown?token={ann.token}")[0] == 404

        answer = {"token": ann.token, "position": 0}
        answer["answers"] = {"alignment": "left", "quality": "right"}
        status, state = post(f"{base}/api/answer", answer)
        assert status == 200 and state["position"] == 1
        assert post(f"{base}/api/answer", answer) == (
            409,
            {"error": "you have already answered this pair"},
        )
        assert post(f"{base}/api/answer", {**answer, "token": "x"})[0] == 403
        assert post(f"{base}/api/answer", {**answer, "position": 1, "answers": {}})[0] == 400
    finally:
        server.shutdown()
        server.server_close()
    with sqlite3.connect(study) as conn:
        assert conn.execute(
            "SELECT question, choice FROM answers ORDER BY question"
        ).fetchall() == [
            ("alignment", "left"),
            ("quality", "right"),
        ]
