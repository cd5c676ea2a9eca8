"""The docs cannot drift from the code: the README stays a front door (short lines, at most 200 of them), its
map of kdcompress/ matches the tree, every `kdcompress COMMAND` the docs write is a real command, every flag
docs/cli.md lists is an option of its command (and every option is listed), and every repository path or link
they name exists. Also the commands this checking added or fixed: `students list` and `presets show`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.commands.flags import TEACHER_FLAGS
from kdcompress.core.spec import InputSpec

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kdcompress"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAP_HEADING = "## Contributing: where things live"
# Top-level names a doc may cite as a path in the repository (relative to its root).
REPO_TOP = ("kdcompress", "docs", "benchmarks", "tests", "presets", "docker", ".ci")
PLACEHOLDERS = {"NAME", "FAMILY"}  # kdcompress/losses/NAME.py: a pattern for a file you write
runner = CliRunner()


def _click_tree() -> dict[tuple[str, ...], object]:
    """Every command path of the Typer app ('distill',), ('teacher', 'train'), ... -> its click command."""
    out: dict[tuple[str, ...], object] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            out[path] = cmd
            return
        for name, sub in subs.items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


COMMANDS = _click_tree()
GROUPS = {path[0] for path in COMMANDS if len(path) > 1}


def _code_texts(text: str) -> list[str]:
    """The code in a markdown page: fenced blocks, 4-space indented lines and `inline spans`."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    indented = [ln for ln in prose.splitlines() if ln.startswith("    ") and not ln.lstrip().startswith(("-", "|"))]
    spans = re.findall(r"`([^`]+)`", prose)
    return [*blocks, *indented, *(" ".join(s.split()) for s in spans)]


def commands_in(code: str) -> set[tuple[str, ...]]:
    """('presets', 'show') for every `kdcompress presets show ...` in `code`; ALL-CAPS words are
    placeholders (`kdcompress X --help`) and end the name."""
    found = set()
    for m in re.finditer(r"(?:^|(?<=[\s(]))kdcompress((?:[ \t]+[a-z][a-z0-9_-]*)+)", code, flags=re.M):
        words = m.group(1).split()
        found.add(tuple(words[:2]) if words[0] in GROUPS else (words[0],))
    return found


def named_commands(text: str) -> set[tuple[str, ...]]:
    """The commands a markdown page names in its code (spans and blocks)."""
    return set().union(*(commands_in(code) for code in _code_texts(text)))


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details to docs/"
    long = [(i + 1, len(ln)) for i, ln in enumerate(lines) if len(ln) > 120]
    assert not long, f"README.md lines over 120 characters (line, length): {long}"


def _map_entries() -> list[str]:
    text = README.read_text()
    assert MAP_HEADING in text, f"README.md lost its map ({MAP_HEADING})"
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([\w.]+/?)`:", section, flags=re.M)


def _tree(root: Path = PKG) -> set[str]:
    """kdcompress/'s packages as 'name/' and its top-level modules as 'name.py' (the package's own
    __init__.py is the package itself)."""
    pkgs = {f"{p.name}/" for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    mods = {p.name for p in root.glob("*.py") if p.name != "__init__.py"}
    return pkgs | mods


def _map_drift(entries: list[str], tree: set[str]) -> tuple[list[str], list[str]]:
    """(map entries the tree lacks, tree entries the map lacks)."""
    missing = [e for e in entries if not _same_unit(e) & tree]
    unnamed = sorted(t for t in tree if not any(t in _same_unit(e) for e in entries))
    return missing, unnamed


def _same_unit(entry: str) -> set[str]:
    """What a map entry may match: `pipeline/` is also the module pipeline.py it was made from (and back)."""
    stem = entry.removesuffix("/").removesuffix(".py")
    return {entry, f"{stem}/", f"{stem}.py"} if stem == "pipeline" else {entry}


def test_the_contributor_map_matches_the_tree():
    entries = _map_entries()
    assert entries, "no `- `name`: ...` lines under the README's map"
    missing, unnamed = _map_drift(entries, _tree())
    assert not missing, f"the README's map names what kdcompress/ does not have: {missing}"
    assert not unnamed, f"kdcompress/ has what the README's map does not name: {unnamed}"


def test_the_map_check_sees_drift(tmp_path):
    """The check can fail: a tree with a package the map lacks and without the ones it names; pipeline.py
    and pipeline/ are one entry either way."""
    for pkg in ("core", "newstage", "pipeline"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "cli.py").write_text("")
    assert _tree(tmp_path) == {"core/", "newstage/", "pipeline/", "cli.py"}
    assert _map_drift(["core/", "pipeline/", "cli.py", "export/"], _tree(tmp_path)) == (["export/"], ["newstage/"])
    assert _map_drift(["core/", "pipeline.py", "cli.py", "newstage/"], _tree(tmp_path)) == ([], [])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_the_docs_name_exists(page):
    named = named_commands(page.read_text())
    unknown = sorted(" ".join(c) for c in named if c not in COMMANDS)
    assert not unknown, f"{page.name} names commands kdcompress does not have: {unknown}"


def test_every_command_the_help_names_exists():
    """`--help` texts (each command's and each option's) name only real commands, where they name one: in
    `backticks` or as "(kdcompress X)"; elsewhere "a kdcompress checkpoint" is prose."""
    texts = [f"{getattr(c, 'help', '')} " + " ".join(getattr(p, "help", None) or "" for p in c.params)
             for c in COMMANDS.values()]
    spans = [m for t in texts for m in re.findall(r"`([^`]+)`|\((kdcompress [^)]+)\)", t)]
    unknown = sorted(" ".join(c) for pair in spans for code in pair for c in commands_in(code) if c not in COMMANDS)
    assert not unknown, f"--help names commands kdcompress does not have: {unknown}"


def test_the_command_check_sees_an_unknown_command():
    text = "Run `kdcompress students list`, then `kdcompress teachers show X` and:\n\n    kdcompress distil --x\n"
    named = named_commands(text)
    assert named == {("students", "list"), ("teachers",), ("distil",)}
    assert {c for c in named if c not in COMMANDS} == {("teachers",), ("distil",)}


def _cli_sections() -> dict[tuple[str, ...], str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    parts = re.split(r"^## kdcompress ([a-z ]+)\n", text, flags=re.M)
    return {tuple(parts[i].split()): parts[i + 1].split("\n## ", 1)[0] for i in range(1, len(parts), 2)}


def _own_text(body: str, path: tuple[str, ...]) -> str:
    """A section without the code spans that speak of another program's flags: `torchrun ...`, or another
    command's (`validate --out`, `kdcompress select --latency-table`)."""
    others = {p[0] for p in COMMANDS} - {path[0]} | {"torchrun"}

    def keep(m: re.Match) -> str:
        words = m.group(1).removeprefix("kdcompress ").split()
        return "" if words and words[0] in others else m.group(0)

    return re.sub(r"`([^`]*)`", keep, body)


def test_docs_cli_has_a_section_per_command_listing_its_flags():
    sections = _cli_sections()
    assert set(sections) == set(COMMANDS), "docs/cli.md sections vs the app's commands: " + str(
        set(sections) ^ set(COMMANDS))
    teacher_flags = {f"--{name.replace('_', '-')}" for name, _, _ in TEACHER_FLAGS}
    for path, body in sections.items():
        options = {o for p in COMMANDS[path].params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        body = _own_text(body, path)
        listed = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", body))
        assert not listed - options - {"--help"}, (path, "lists flags the command lacks", listed - options)
        primary = {p.opts[0] for p in COMMANDS[path].params if p.opts[0].startswith("--")}
        unlisted = primary - listed - teacher_flags - {"--help"}
        assert not unlisted, (path, "docs/cli.md does not list", unlisted)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _repo_paths(text: str) -> set[str]:
    pattern = r"(?<![\w/.~-])((?:" + "|".join(re.escape(t) for t in REPO_TOP) + r")/[\w./*-]*[\w*])"
    return set(re.findall(pattern, text)) | set(re.findall(r"(?<![\w/.-])(Dockerfile|Makefile|pyproject\.toml)\b",
                                                           text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_and_link_the_docs_name_exists(page):
    text = page.read_text()
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    for rel in _repo_paths(text):
        parts = Path(rel).parts
        if any(Path(p).stem in PLACEHOLDERS for p in parts):
            rel = str(Path(*[p for p in parts if Path(p).stem not in PLACEHOLDERS]))
        if not (any(ROOT.glob(rel)) if "*" in rel else (ROOT / rel).exists()):  # a glob names one file at least
            bad.append(rel)
    assert not bad, f"{page.name} names paths or links that do not exist: {sorted(bad)}"


def test_the_path_check_sees_a_missing_file():
    text = "See `kdcompress/nothere.py`, benchmarks/RESULTS.md, `benchmarks/results/x-*.json` and presets/NAME.toml."
    assert _repo_paths(text) == {"kdcompress/nothere.py", "benchmarks/RESULTS.md", "benchmarks/results/x-*.json",
                                 "presets/NAME.toml"}
    assert not (ROOT / "kdcompress/nothere.py").exists()


def _results_headings() -> list[str]:
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    return [" ".join(h.split()) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)]


def results_citations(text: str) -> list[str]:
    """The sections a text cites as `RESULTS.md, "name"` (or `section "name"`, or the name in backticks),
    with comment markers and line breaks inside the quotation flattened."""
    flat = " ".join(ln.strip().lstrip("#").strip() for ln in text.splitlines())
    found = re.findall(r'RESULTS\.md,\s+(?:section\s+)?(?:"([^"]+)"|`([^`]+)`)', flat)
    return [" ".join((a or b).split()) for a, b in found]


def test_every_cited_results_section_exists():
    """Code and docs cite benchmarks/RESULTS.md by section, not by number: each quoted name starts a heading."""
    heads = _results_headings()
    sources = [*PKG.rglob("*.py"), *PAGES]
    bad = [(src.name, c) for src in sources for c in results_citations(src.read_text())
           if not any(h.startswith(c) for h in heads)]
    assert not bad, f"citations of benchmarks/RESULTS.md sections that do not exist: {bad}"


def test_the_citation_check_sees_a_missing_section():
    text = '# cites (benchmarks/RESULTS.md, "latency is a\n# per-process lottery") and RESULTS.md, section "presets"'
    assert results_citations(text) == ["latency is a per-process lottery", "presets"]
    heads = _results_headings()
    assert not any(h.startswith("latency is a per-process lottery") for h in heads)
    assert any(h.startswith("presets") for h in heads)


# ------------------------------------------------------------------------------ students list


def test_students_list_is_the_zoo_at_an_input_shape():
    from kdcompress.students import STUDENTS

    r = runner.invoke(app, ["students", "list", "--input-shape", "1,8,8", "--num-classes", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["input_shape"] == [1, 8, 8] and out["num_classes"] == 3
    rows = {s["name"]: s for s in out["students"]}
    assert list(rows) == list(STUDENTS.names())
    small, big = rows["resnet8x2"], rows["resnet18"]
    # counted independently here, on the model the registry builds for 1x8x8 and 3 classes
    model = STUDENTS.get("resnet8x2").build(3, InputSpec((1, 8, 8), (0.0,), (1.0,)))
    assert small["params"] == sum(p.numel() for p in model.parameters())
    assert small["suits"] and small["flops"] > 0 and small["input_sizes"] == "<= 64 px"
    assert small["family"] == "cifar_resnet"
    assert not big["suits"] and big["params"] is None and big["flops"] is None and big["input_sizes"] == ">= 65 px"
    # FLOPs follow the input shape: 4x the pixels, about 4x the FLOPs for a fully convolutional net
    r2 = runner.invoke(app, ["students", "list", "--input-shape", "1,16,16", "--num-classes", "3", "--json"])
    small16 = {s["name"]: s for s in json.loads(r2.stdout)["students"]}["resnet8x2"]
    assert 3.5 < small16["flops"] / small["flops"] < 4.5


def test_students_list_table_and_bad_shape():
    r = runner.invoke(app, ["students", "list", "--input-shape", "1,8,8"])
    assert r.exit_code == 0, r.output
    assert "resnet8x2" in r.stdout and ">= 65 px" in r.stdout
    bad = runner.invoke(app, ["students", "list", "--input-shape", "1,8"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == ["kdcompress: error: --input-shape must be C,H,W with positive sizes, "
                                               "got (1, 8)"]


# ------------------------------------------------------------------------------ presets show: literal text


def test_presets_show_prints_bracketed_text_as_written(tmp_path):
    """rich reads "[arXiv:...]" and "[bold]" as markup tags and drops them; a preset's text must print as written."""
    preset = tmp_path / "mine.toml"
    preset.write_text('description = "KD as in [Hinton 2015], see [bold]this[/bold]"\n'
                      'reference = "[arXiv:1503.02531] Distilling the Knowledge"\n'
                      '[[loss]]\nkind = "ce"\nweight = 0.1\n[[loss]]\nkind = "kd"\nweight = 0.9\n')
    r = runner.invoke(app, ["presets", "show", str(preset)])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.stdout.split())
    assert "KD as in [Hinton 2015], see [bold]this[/bold]" in flat
    assert "reference: [arXiv:1503.02531] Distilling the Knowledge" in flat
    j = json.loads(runner.invoke(app, ["presets", "show", str(preset), "--json"]).stdout)
    assert j["reference"] == "[arXiv:1503.02531] Distilling the Knowledge"  # --json as written, unescaped
