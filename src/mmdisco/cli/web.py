"""The web pages: `mmdisco app` (Gradio: unguided vs guided from one seed) and `mmdisco study`
(the A/B listening study)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.errors import InputError, check_int
from mmdisco.study import DEFAULT_URL  # stdlib only: cheap to import


@app.command("app")
def app_cmd(
    pipeline: Annotated[
        Path | None,
        typer.Option(help="pipeline folder (model_index.json); default: the shipped world one"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to serve on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
    out: Annotated[
        Path | None, typer.Option(help="folder for the generated mp4 files (default: a temp one)")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 1,
    share: Annotated[
        bool,
        typer.Option(
            "--share",
            help="also serve on a public gradio.live link (through Gradio's relay; anyone "
            "with the link can use the page)",
        ),
    ] = False,
) -> None:
    """Serve the page: pick a seed (and a world class, or a prompt for real models), scales
    and steps, and see and hear the base models alone beside MMDisCo-guided generation."""
    import torch

    _check_address(host, port)
    check_int("threads", threads, 0)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from mmdisco.app import launch
    from mmdisco.pipeline import WORLD_PIPELINE

    if threads > 0:
        torch.set_num_threads(threads)
    launch(pipeline or WORLD_PIPELINE, host=host, port=port, out_dir=out, share=share)


def _check_address(host: str, port: int) -> None:
    """Refuse a port out of range or a host name that does not resolve, before any work."""
    check_int("port", port, 1, 65535)
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as err:
        raise InputError(f"cannot serve on {host!r} ({err.strerror})", "host") from None


BaseUrl = Annotated[
    str,
    typer.Option(
        help="the address listeners open (the server's, or a proxy's in front of it), for the "
        "printed links"
    ),
]

study = typer.Typer(
    help="The A/B listening study: create it, invite listeners, serve it, export win rates.",
    no_args_is_help=True,
)
app.add_typer(study, name="study")


@study.command("create")
def study_create(
    db: Annotated[Path, typer.Option(help="the study's SQLite file (must not exist)")],
    a: Annotated[
        Path | None, typer.Option(help="folder of system A's clips (paired with B by file name)")
    ] = None,
    b: Annotated[Path | None, typer.Option(help="folder of system B's clips")] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            help="instead of --a/--b: sample each seed unguided (A) and guided (B) with this "
            "pipeline folder ('world': the shipped world pipeline)"
        ),
    ] = None,
    num_pairs: Annotated[int, typer.Option(help="with --pipeline: seeds to sample")] = 10,
    first_seed: Annotated[int, typer.Option(help="with --pipeline: the first seed")] = 0,
    prompt: Annotated[
        str | None, typer.Option(help="with --pipeline: the prompt (real base models)")
    ] = None,
    name_a: Annotated[str | None, typer.Option(help="system A's name in the export")] = None,
    name_b: Annotated[str | None, typer.Option(help="system B's name in the export")] = None,
    listeners: Annotated[int, typer.Option(help="listeners to invite now")] = 0,
    quality: Annotated[
        bool, typer.Option(help="also ask which clip has the better quality")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of each listener's order and sides")] = 0,
    require_play: Annotated[
        bool, typer.Option(help="take an answer only once both clips were played to the end")
    ] = True,
    base_url: BaseUrl = DEFAULT_URL,
) -> None:
    """Create a study from two folders of clips, or from a pipeline's unguided and guided
    samples of the same seeds (written beside the database); prints each invited listener's
    link."""
    from mmdisco.study import create_study, invite, match_folders

    check_int("num_pairs", num_pairs, 1)
    check_int("first_seed", first_seed, 0)
    check_int("listeners", listeners, 0)
    check_int("seed", seed, 0)
    if db.exists():
        raise InputError(
            "already exists; invite more listeners with `mmdisco study invite`", str(db)
        )
    if pipeline is not None:
        if a is not None or b is not None:
            raise InputError("give either --pipeline or --a and --b, not both")
        a, b = _sample_study_clips(pipeline, db, num_pairs, first_seed, prompt)
        name_a, name_b = name_a or "unguided", name_b or "guided"
    elif a is None or b is None:
        missing = "a" if a is None else "b"
        raise InputError(
            "is required (with --a and --b: two folders of clips), or give --pipeline", missing
        )
    questions = ("alignment", "quality") if quality else ("alignment",)
    pairs = match_folders(a, b)
    name_a, name_b = name_a or a.name, name_b or b.name
    create_study(db, pairs, name_a, name_b, questions, seed, require_play=require_play)
    typer.echo(f"created {db}: {len(pairs)} pairs, questions {', '.join(questions)}", err=True)
    if listeners:
        _print_links(invite(db, listeners), base_url, db)


def _sample_study_clips(
    pipeline: Path, db: Path, num_pairs: int, first_seed: int, prompt: str | None
) -> tuple[Path, Path]:
    import torch

    from mmdisco.app import sample_both, write_both
    from mmdisco.pipeline import WORLD_PIPELINE, MMDisCoPipeline

    torch.set_num_threads(1)
    pipe = MMDisCoPipeline.from_pretrained(WORLD_PIPELINE if str(pipeline) == "world" else pipeline)
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(first_seed, first_seed + num_pairs))
    typer.echo(f"sampling seeds {seeds[0]}-{seeds[-1]}, unguided and guided", err=True)
    clips = db.with_name(db.stem + "-clips")
    write_both(pipe, sample_both(pipe, seeds, prompt), seeds, clips, "{name}/seed-{seed:05d}")
    return clips / "unguided", clips / "guided"


def _print_links(invitations: list, base_url: str, db: Path) -> None:
    """Each listener's link on stdout; how to open them on stderr."""
    for inv in invitations:
        typer.echo(f"{inv.name}: {inv.link(base_url)}")
    typer.echo(
        f"the links work while `mmdisco study serve --db {db}` serves at {base_url}", err=True
    )


@study.command("invite")
def study_invite(
    db: Annotated[Path, typer.Option(help="the study's SQLite file")],
    listeners: Annotated[int, typer.Option(help="listeners to invite")] = 1,
    name: Annotated[
        list[str] | None, typer.Option(help="a listener's name (repeat for several)")
    ] = None,
    base_url: BaseUrl = DEFAULT_URL,
) -> None:
    """Invite listeners: each gets a secret link, a random order of the pairs and sides;
    prints each new listener's link."""
    from mmdisco.study import invite

    check_int("listeners", listeners, 1)
    _print_links(invite(db, listeners, name), base_url, db)


@study.command("serve")
def study_serve(
    db: Annotated[Path, typer.Option(help="the study's SQLite file")],
    host: Annotated[
        str, typer.Option(help="address to serve on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
) -> None:
    """Serve the listening page; each listener opens http://HOST:PORT/?token=THEIR_TOKEN."""
    from mmdisco.study import StudyServer, invitations

    _check_address(host, port)
    server = StudyServer(db, host, port)
    for inv in invitations(db):
        typer.echo(f"{inv.name}: {inv.link(f'http://{host}:{server.server_port}')}")
    typer.echo(f"serving {db} on http://{host}:{server.server_port}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@study.command("export")
def study_export(
    db: Annotated[Path, typer.Option(help="the study's SQLite file")],
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
    csv: Annotated[
        Path | None,
        typer.Option(help="write the raw answers here as CSV, one row per answer"),
    ] = None,
) -> None:
    """Win rates of B over A per question with Wilson 95 % intervals and binomial tests,
    per listener and per pair; prints the summary table."""
    from mmdisco.io import write_json_atomic, write_text_atomic
    from mmdisco.study import answer_rows, answers_csv, export, render_markdown

    result = export(db)
    if out is not None:
        write_json_atomic(out, result)
    if csv is not None:
        rows = answer_rows(db)
        write_text_atomic(csv, answers_csv(rows))
        typer.echo(f"wrote {len(rows)} answers to {csv}", err=True)
    typer.echo(render_markdown(result))
