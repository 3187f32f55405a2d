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
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.media import write_mp4
from mmdisco.study import (
    ANSWER_COLUMNS,
    StudyError,
    StudyServer,
    answer_rows,
    answers_csv,
    binomial_p_value,
    connect,
    create_study,
    export,
    invitations,
    invite,
    listener_id,
    match_folders,
    next_trial,
    record_answer,
    render_markdown,
    wilson_interval,
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
        assert next_trial(conn, b_id)["done"]

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

    # One row per answer; the winner is the system the chosen side played.
    rows = answer_rows(study)
    assert len(rows) == 12 and result["answers"] == 12
    ann_alignment = [r for r in rows if r["listener"] == "ann" and r["question"] == "alignment"]
    assert sorted(r["pair"] for r in ann_alignment) == ["seed-0", "seed-1", "seed-2"]
    assert all((r["winner"], r["winner_name"]) == ("b", "guided") for r in ann_alignment)
    for r in rows:
        side = {"left": r["left_system"], "right": "ab"[r["left_system"] == "a"]}
        assert r["winner"] == side.get(r["choice"])
    lines = answers_csv(rows).splitlines()
    assert lines[0] == ",".join(ANSWER_COLUMNS) and len(lines) == 13
    assert lines[1].split(",")[:3] == [rows[0]["listener"], rows[0]["pair"], rows[0]["question"]]


def test_export_counts_listeners_who_answered_among_those_invited(study):
    first, _, _ = invite(study, 3)
    with connect(study) as conn:
        record_answer(
            conn, listener_id(conn, first.token), 0, {"alignment": "left", "quality": "none"}
        )
    result = export(study)
    assert (result["listeners"], result["invited"], result["pairs"]) == (1, 3, 3)
    assert "1 of 3 invited listeners answered; 3 pairs." in render_markdown(result)
    assert result["require_play"] is True


@pytest.mark.parametrize(("wins", "trials"), [(0, 1), (1, 1), (4, 5), (3, 10), (7, 14), (45, 60)])
def test_interval_and_p_value_match_scipy(wins, trials):
    from scipy.stats import binomtest

    test = binomtest(wins, trials, 0.5)
    ci = test.proportion_ci(0.95, method="wilson")
    assert wilson_interval(wins, trials) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert binomial_p_value(wins, trials) == pytest.approx(test.pvalue, rel=1e-12)


def test_create_and_invite_print_each_listeners_link(tmp_path):
    names = ["seed-0", "seed-1"]
    a, b = clips(tmp_path / "a", names, 0), clips(tmp_path / "b", names, 1)
    db = tmp_path / "study.sqlite"
    runner = CliRunner()
    args = ["study", "create", "--db", str(db), "--a", str(a), "--b", str(b), "--listeners", "2"]
    created = runner.invoke(app, args)
    assert created.exit_code == 0, created.output
    more = runner.invoke(
        app, ["study", "invite", "--db", str(db), "--name", "cy", "--base-url", "https://x.org/"]
    )
    assert more.exit_code == 0, more.output
    links = [f"{i.name}: http://127.0.0.1:8000/?token={i.token}" for i in invitations(db)[:2]]
    assert created.stdout.splitlines() == links
    (cy,) = invitations(db)[2:]
    assert more.stdout.splitlines() == [f"cy: https://x.org/?token={cy.token}"]
    assert "token " not in created.output and "it/s" not in created.output
    with connect(db) as conn:
        assert next_trial(conn, listener_id(conn, cy.token))["require_play"] is True

    loose = tmp_path / "loose.sqlite"
    args = ["study", "create", "--db", str(loose), "--a", str(a), "--b", str(b)]
    assert runner.invoke(app, [*args, "--no-require-play"]).exit_code == 0
    (dan,) = invite(loose, 1)
    with connect(loose) as conn:
        assert next_trial(conn, listener_id(conn, dan.token))["require_play"] is False


def test_export_writes_the_answers_as_csv(study, tmp_path):
    (ann,) = invite(study, 1)
    with connect(study) as conn:
        listener = listener_id(conn, ann.token)
        for position in range(2):
            record_answer(conn, listener, position, {"alignment": "right", "quality": "left"})
    out, table = tmp_path / "out" / "answers.csv", tmp_path / "out" / "results.json"
    args = ["study", "export", "--db", str(study), "--csv", str(out), "--out", str(table)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(ANSWER_COLUMNS) and len(lines) == 1 + 4
    assert json.loads(table.read_text())["answers"] == 4
    assert "1 of 1 invited listener answered" in result.stdout


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
        status, body, headers = get(f"{base}/")
        assert status == 403 and b"by invitation" in body
        assert headers["Content-Type"].startswith("text/html") and b"/study.css" in body
        status, style, headers = get(f"{base}/study.css")
        assert status == 200 and headers["Content-Type"] == "text/css" and b".notice" in style
        assert get(f"{base}/favicon.ico")[0] == 204
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
        status, body, headers = get(f"{base}{trial['left']}?token=wrong")
        assert status == 403 and headers["Content-Type"].startswith("text/html")
        assert b"by invitation" in body
        assert get(f"{base}/api/next?token=wrong")[:2] == (
            403,
            json.dumps(
                {"error": "this study is by invitation: open the link you were given"}
            ).encode(),
        )
        assert get(f"{base}/clip/unknown?token={ann.token}")[0] == 404

        answer = {"token": ann.token, "position": 0}
        answer["answers"] = {"alignment": "left", "quality": "right"}
        status, state = post(f"{base}/api/answer", answer)
        assert status == 200 and state["position"] == 1
        # A stale tab answering again: refused, with the next unanswered pair to show.
        status, state = post(f"{base}/api/answer", answer)
        assert status == 409 and state["error"].startswith("You have already answered this pair")
        assert state["next"]["position"] == 1 and state["next"]["require_play"] is True
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
