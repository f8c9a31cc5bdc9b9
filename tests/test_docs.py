"""Every ``reluvit`` command shown in ``README.md`` and ``docs/*.md`` parses, so the docs cannot rot. Fast: nothing
trains, nothing is submitted, nothing is downloaded.

What counts as a command: a line of a fenced code block, or an inline code span (which may wrap across lines), that
starts with ``reluvit`` (or a path ending in ``bin/reluvit``, or ``python -m reluvit``) once a shell prompt ``$ `` and
leading ``VAR=value`` words are stripped. Those environment variables are not set: they name data that is not here.
A fenced line ending in ``\\`` continues on the next; ``# comments`` are dropped (``shlex``).

Each command runs through the real :func:`reluvit.cli.main` with the commands themselves replaced by checks that run
nothing: the parser takes the subcommand and its flags, and ``main`` splits off the overrides and refuses what it
refuses (an unknown flag, overrides to a command that takes none, ``--runs-dir`` and ``runs_dir=`` disagreeing);
then, in the replaced command:

- ``train``: the launcher and the ``--cluster`` profile (:meth:`reluvit.sweep.launch.Launch.profile`), and every
  point of the overrides composed (:func:`reluvit.run.compose.compose_points`);
- ``sweep``: the same launcher check, the sweep loaded at its scale (:func:`reluvit.sweep.spec.load`), its figure
  found, and the first point of each of its blocks composed with the overrides;
- ``status``, ``cancel``, ``plots``, ``wandb``: each named sweep loaded at the scale (and, for ``wandb``, having a
  dashboard layout); overrides composed as for ``sweep``;
- ``evaluate``: the overrides composed as the ``eval`` group (:func:`reluvit.run.compose.eval_config`);
- ``shards``: the label set is one there is. The other commands take paths only: parsing is the check.

Nothing is validated against data (the values' ranges are checked when a run is prepared, which the docs' own
config-error examples rely on): a key that does not exist fails, a value out of range does not.

Placeholders, by an explicit rule:

1. Three are filled with known values: a placeholder after ``--cluster`` (``--cluster <name>``) with
   ``example_gpu``, the packaged template profile; ``<figure>`` with ``fig2``; ``<scale>`` with ``smoke``.
2. A command whose subcommand is a placeholder (``reluvit <command>``, ``reluvit ...``) or absent (``reluvit``, the
   program's name) is skipped.
3. A synopsis, a command still holding ``<``, ``...``, ``|`` or a word that starts with ``[`` (``reluvit export
   RUN_DIR [--out FILE]``), is checked for its subcommand and for each ``--flag`` being one of that subcommand's
   options; nothing more is parsed.
4. An inline span that gives none of its subcommand's required positional arguments mentions the command or an
   option of it in prose (``reluvit sweep``, ``reluvit shards --seed``): it is checked as a synopsis. A fenced line
   gets no such leniency.
5. Upper-case words such as ``DIR`` or ``TABLE`` stand where paths go, and parse as paths.
6. The names that docs/install.md's example makes, the sweep ``fig2_bigger`` and the profile ``mycluster``, are made
   here as that example makes them: copies of ``fig2`` and ``example_gpu`` in a temporary ``$RELUVIT_SWEEPS_DIR``
   and ``$RELUVIT_PROFILES_DIR``.

Also checked: every ``make <target>`` shown is a target of the ``Makefile`` (a target with an upper-case letter or
``<`` is a placeholder: ``make figN``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from reluvit import cli
from reluvit.search import packaged

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
USER_SWEEPS = {"fig2_bigger": "fig2"}  # docs/install.md: "my_sweeps/fig2_bigger.yaml: a copy of fig2.yaml"
USER_PROFILES = {"mycluster": "example_gpu"}  # docs/install.md: "my_profiles/mycluster.yaml: --cluster mycluster"
ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _fences_and_paragraphs(text: str):
    """``("fence", line_no, line)`` for each (continuation-joined) line of a fenced block and ``("span", line_no,
    span)`` for each inline code span of the prose, with 1-based line numbers."""
    lines = text.splitlines()
    fenced, paragraph, start = False, [], 0
    pending, pending_no = "", 0

    def spans(block: list[str], first: int):
        joined = "\n".join(block)
        for match in SPAN.finditer(joined):
            yield "span", first + joined.count("\n", 0, match.start()), " ".join(match.group(1).split())

    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if not fenced:
                yield from spans(paragraph, start)
                paragraph = []
            fenced = not fenced
            continue
        if fenced:
            if not pending:
                pending_no = number
            pending += line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            yield "fence", pending_no, pending
            pending = ""
        elif line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        else:
            yield from spans(paragraph, start)
            paragraph = []
    yield from spans(paragraph, start)


def _words(text: str) -> list[str] | None:
    """The shell words of a command line without its prompt and leading ``VAR=value`` words; None if it is not one
    that shlex can split (a prose fragment in a code span)."""
    text = text.strip()
    text = text[2:] if text.startswith("$ ") else text
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and ENV_WORD.match(words[0]):
        words.pop(0)
    return words


def _reluvit_argv(words: list[str]) -> list[str] | None:
    if words and (words[0] == "reluvit" or words[0].endswith("bin/reluvit")):
        return words[1:]
    if len(words) > 2 and Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "reluvit"]:
        return words[3:]
    return None


def _collect():
    commands, makes = [], []
    for doc in DOCS:
        for kind, number, text in _fences_and_paragraphs(doc.read_text()):
            words = _words(text)
            if not words:
                continue
            where = f"{doc.relative_to(REPO)}:{number}"
            if (argv := _reluvit_argv(words)) is not None:
                commands.append(pytest.param(argv, text, kind, id=where))
            elif words[0] == "make" and (kind == "fence" or len(words) > 1):
                makes += [pytest.param(target, id=f"{where}:{target}") for target in words[1:]
                          if "=" not in target and not target.startswith("-")]
                if any(word.startswith(PASSED_ON) for word in words) and (argv := _make_argv(words)) is not None:
                    commands.append(pytest.param(argv, text, kind, id=f"{where}:make"))
    return commands, makes


PASSED_ON = ("FLAGS=", "ARGS=", "RUNS_DIR=")  # the Makefile's variables that reach the CLI


def _make_argv(words: list[str]) -> list[str] | None:
    """The reluvit command a ``make <target> FLAGS=... ARGS=...`` line runs (``make -n``: printed, not run)."""
    printed = subprocess.run(["make", "-s", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True).stdout
    lines = [line for line in printed.splitlines() if "bin/reluvit " in line]
    return _reluvit_argv(shlex.split(lines[-1])) if lines else None


COMMANDS, MAKE_TARGETS = _collect()


FILLED = {"<figure>": "fig2", "<scale>": "smoke"}


def _fill(argv: list[str]) -> list[str]:
    """The placeholders with known values filled in (the rule in the module's docstring)."""
    filled = [FILLED.get(w, w) for w in argv]
    return [("example_gpu" if i and filled[i - 1] == "--cluster" and w.startswith("<") else w)
            for i, w in enumerate(filled)]


def _is_synopsis(argv: list[str]) -> bool:
    return any("<" in w or "..." in w or "|" in w or w.startswith("[") for w in argv)


def _mention(argv: list[str], subparser: argparse.ArgumentParser) -> bool:
    """Whether ``argv`` (subcommand first) gives none of the subcommand's required positional arguments: every word
    after the subcommand is a flag or a flag's value."""
    required = [a for a in subparser._actions if not a.option_strings and a.nargs in (None, "+")]
    words, positional = iter(argv[1:]), False
    for word in words:
        if word.startswith("-"):
            action = subparser._option_string_actions.get(word.split("=")[0])
            if action is not None and action.nargs != 0 and "=" not in word:
                next(words, None)
        else:
            positional = True
    return bool(required) and not positional


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """docs/install.md's own sweep and profile directories, and a runs directory of the test's own."""
    sweeps, profiles = tmp_path / "my_sweeps", tmp_path / "my_profiles"
    sweeps.mkdir()
    profiles.mkdir()
    for name, source in USER_SWEEPS.items():
        shutil.copy(packaged("sweeps") / f"{source}.yaml", sweeps / f"{name}.yaml")
    for name, source in USER_PROFILES.items():
        shutil.copy(packaged("profiles") / f"{source}.yaml", profiles / f"{name}.yaml")
    monkeypatch.setenv("RELUVIT_SWEEPS_DIR", str(sweeps))
    monkeypatch.setenv("RELUVIT_PROFILES_DIR", str(profiles))
    monkeypatch.delenv("RELUVIT_CONF_DIR", raising=False)
    monkeypatch.setenv("RELUVIT_RUNS_DIR", str(tmp_path / "runs"))


def _compose_sweep_points(sweep, overrides: list[str]) -> None:
    """The first point of each block of ``sweep`` with ``overrides`` (its sweep syntax expanded), composed."""
    from reluvit.run.compose import compose_points, expand

    extras = expand(overrides)
    compose_points([[*block.points()[0], *extra] for block in sweep.blocks for extra in extras])


def _checks(monkeypatch) -> list[str]:
    """Replace every command of :mod:`reluvit.cli` by its check; returns the list the checks append their names to."""
    import reluvit.soft
    from reluvit.run.compose import compose_points, eval_config, expand
    from reluvit.run.schema import ConfigError
    from reluvit.sweep import spec

    ran: list[str] = []

    def train(args, overrides):
        cli._launch(args).profile()
        compose_points(expand(overrides))
        ran.append("train")

    def sweep(args, overrides):
        from reluvit.report.figures import plot_function

        cli._launch(args).profile(args.scale)
        loaded = spec.load(args.sweep, args.scale, args.seeds)
        plot_function(loaded)
        _compose_sweep_points(loaded, overrides)
        ran.append("sweep")

    def sweeps(name):
        def check(args, overrides):
            for sweep_name in [args.sweep] if hasattr(args, "sweep") else args.sweeps:
                if name == "wandb":
                    from reluvit.dashboards.layout import LAYOUTS

                    if sweep_name not in LAYOUTS:
                        raise ConfigError("wandb", f"no dashboard for {sweep_name}")
                loaded = spec.load(sweep_name, args.scale, args.seeds)
                if overrides:
                    _compose_sweep_points(loaded, overrides)
            ran.append(name)
        return check

    def evaluate(args, overrides, parser):
        eval_config(overrides)
        ran.append("evaluate")

    def shards(args, parser):
        from reluvit.data.labels import LABEL_SETS

        if args.label_set not in LABEL_SETS:
            raise ConfigError("--label-set", f"{args.label_set!r} is not one of: {', '.join(LABEL_SETS)}")
        ran.append("shards")

    def plain(name):
        def check(*args):
            ran.append(name)
        return check

    for name, check in (("_train", train), ("_sweep", sweep), ("_status", sweeps("status")),
                        ("_cancel", sweeps("cancel")), ("_plots", sweeps("plots")), ("_wandb", sweeps("wandb")),
                        ("_claims", sweeps("claims")),
                        ("_evaluate", evaluate), ("_shards", shards), ("_prune", plain("prune")),
                        ("_export", plain("export")), ("_wandb_sync", plain("wandb-sync")),
                        ("_results", plain("results"))):
        monkeypatch.setattr(cli, name, check)
    monkeypatch.setattr(reluvit.soft, "table", lambda: ran.append("soft-table") or "")
    return ran


@pytest.mark.parametrize(("argv", "text", "kind"), COMMANDS)
def test_a_documented_command_parses(argv, text, kind, user_dirs, monkeypatch, capsys):
    argv = _fill(argv)
    parser = cli._parser()
    subcommands = _subcommands(parser)
    words = [w for w in argv if not w.startswith("-")]
    if not words or words[0].startswith("<") or words[0] == "...":
        pytest.skip(f"the program's name, or a placeholder for its command: {text}")
    assert words[0] in subcommands, f"no subcommand in {text!r}; the commands are: {', '.join(subcommands)}"
    if _is_synopsis(argv) or (kind == "span" and _mention(argv[argv.index(words[0]):], subcommands[words[0]])):
        known = {*subcommands[words[0]]._option_string_actions, *parser._option_string_actions}
        flags = {w.strip("[]").split("=")[0] for w in argv if re.match(r"^\[?--?[A-Za-z]", w)}
        assert flags <= known, f"{text!r}: {', '.join(sorted(flags - known))} not options of {words[0]}"
        return
    ran = _checks(monkeypatch)
    try:
        cli.main(list(argv))
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"{text!r} is refused (exit {e.code}): {capsys.readouterr().err.strip()}")
    assert ran, f"{text!r} ran no command"


def test_the_docs_show_commands_to_check():
    """The extractor finds the docs' commands (a regression in it would pass every command by finding none)."""
    full = [p for p in COMMANDS if p.values[0] and not _is_synopsis(_fill(p.values[0]))]
    subcommands = {next((w for w in p.values[0] if not w.startswith("-")), None) for p in full}
    assert len(full) >= 30 and {"train", "sweep", "shards", "status", "wandb", "evaluate"} <= subcommands


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    figures = {p.stem for p in (REPO / "sweeps").glob("fig*.yaml")}
    targets = set()
    for line in text.splitlines():
        if (match := re.match(r"^([^\s#:=][^:=]*):(?!=)", line)) and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return {t for t in targets if not t.startswith("$")} | (figures if "$(FIGURES)" in text else set())


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_a_documented_make_target_exists(target):
    if "<" in target or any(c.isupper() for c in target):
        pytest.skip(f"a placeholder: make {target}")
    assert target in _make_targets(), f"make {target}: no such target in the Makefile"


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation but ``-`` and ``_`` dropped, spaces
    to ``-``)."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_relative_links_point_at_what_is_there(doc):
    """A link that moved with the reference (``README.md`` -> ``docs/``) still finds its file and heading."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: ({target}): no {file}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{doc.name}: ({target}): no heading #{anchor} in {file.name}"
