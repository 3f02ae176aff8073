"""The community leaderboard (community/leaderboard.py): LEADERBOARD.md and
site/index.html from submission records, and the page in headless Chromium.

The fixture records (tests/fixtures/community/submissions/) hold two tracks:
nano (a base recipe and three ablations: one significantly up, one significantly
down, one not significant; hostile contributor strings; a recipe path that must not
become a link) and small (two benchmarks, an ablation that reports one of them, no
compute, and a comparison without a "significant" flag).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from community import leaderboard
from community.leaderboard import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "community" / "submissions"

NANO_RANKED = ["nano-self-consistency-1.0.0", "nano-no-verify-1.0.0", "nano-base-1.0.0", "nano-weak-teacher-1.0.0"]


def make_board(root: Path, records: dict[str, dict] | None = None) -> Path:
    """A repository root holding the fixture submissions (or `records`), built."""
    subs = root / "community" / "submissions"
    subs.mkdir(parents=True)
    if records is None:
        for path in FIXTURES.glob("*.json"):
            shutil.copy(path, subs / path.name)
    else:
        for name, record in records.items():
            (subs / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
    assert main(["--root", str(root)]) == 0
    return root


@pytest.fixture
def board(tmp_path: Path) -> Path:
    return make_board(tmp_path / "repo")


def md_tables(md: str) -> dict[str, list[list[str]]]:
    """{track: rows of cells (header first, separator dropped)} from LEADERBOARD.md,
    splitting cells on unescaped '|' as a Markdown renderer does."""
    tables: dict[str, list[list[str]]] = {}
    track = None
    for line in md.splitlines():
        m = re.fullmatch(r"## Track `(.*)`", line)
        if m:
            track = m.group(1)
            tables[track] = []
        elif line.startswith("|") and track is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(re.fullmatch(r"-*:?-+:?", c) for c in cells):
                tables[track].append(cells)
    return tables


def row_of(table: list[list[str]], needle: str) -> dict[str, str]:
    header = table[0]
    for cells in table[1:]:
        if needle in cells[1]:
            assert len(cells) == len(header), cells
            return dict(zip(header, cells))
    raise AssertionError(f"no row for {needle}")


# --------------------------------------------------------------------------- markdown


def test_markdown_ranks_deltas_and_marks(board: Path) -> None:
    md = (board / "community" / "LEADERBOARD.md").read_text(encoding="utf-8")
    tables = md_tables(md)
    assert list(tables) == ["nano", "small"]
    nano = tables["nano"]
    assert [r[0] for r in nano[1:]] == ["1", "2", "3", "4"]
    assert [r[1].split("]")[0].strip("[") for r in nano[1:]] == [
        "nano-self-consistency 1.0.0", "nano-no-verify 1.0.0", "nano-base 1.0.0", "nano-weak-teacher 1.0.0",
    ]
    delta = "Δ nano-bench vs parent"
    assert row_of(nano, "nano-self-consistency")[delta] == "▲ +0.068 [+0.012, +0.124]"
    assert row_of(nano, "nano-no-verify")[delta] == "· +0.006 [-0.051, +0.064]"
    assert row_of(nano, "nano-weak-teacher")[delta] == "▼ -0.080 [-0.140, -0.021]"
    base = row_of(nano, "nano-base 1.0.0")
    assert base[delta] == "" and base["parent"] == "–"
    assert base["nano-bench pass@1 [CI]"] == "0.409 [0.353, 0.466]"
    assert base["SFT rows"] == "6,450" and base["teacher tokens"] == "456,789"
    assert base["device hours"] == "0.06 (1× cpu)"
    assert base["contributors"] == "Ada Lovelace (Analytical Engines Ltd)"
    assert row_of(nano, "nano-no-verify")["parent"] == "nano-base-1.0.0"

    small = tables["small"]
    long_cot = row_of(small, "small-long-cot")
    # No "significant" flag in the record: the interval excludes zero, so it is marked.
    assert long_cot["Δ gsm8k vs parent"] == "▲ +0.040 [+0.015, +0.066]"
    # A benchmark the ablation does not report, and no compute section at all.
    assert long_cot["math500 pass@1 [CI]"] == "–" and long_cot["Δ math500 vs parent"] == "–"
    assert long_cot["device hours"] == "–" and long_cot["teacher tokens"] == "–"
    assert row_of(small, "small-base")["device hours"] == "48 (8× H100)"

    assert "▲ significantly higher than the parent" in md  # the legend
    assert "training-seed noise" in md and "0.41 to 0.48" in md  # the footnote
    assert "newest 2026-11-26" in md


def test_markdown_escapes_contributor_strings(board: Path) -> None:
    md = (board / "community" / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert "<script" not in md and "<i>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert r"Pipes \| and \[links\](javascript:alert(1))" in md
    assert r"Grace \`Hopper\` # heading" in md  # the newline is gone: no heading injected
    assert not any(line.startswith("# heading") for line in md.splitlines())
    # Every table row has exactly as many cells as its header (no '|' got through).
    for table in md_tables(md).values():
        assert {len(r) for r in table} == {len(table[0])}
    # A recipe path that is not a plain relative path is shown, not linked.
    row = row_of(md_tables(md)["nano"], "nano-self-consistency")
    assert row["submission"] == "nano-self-consistency 1.0.0"
    assert not re.search(r"(?<!\\)\]\((\.\./)?javascript", md)
    assert row_of(md_tables(md)["nano"], "nano-base 1.0.0")["submission"] == (
        "[nano-base 1.0.0](../recipes/nano/base.yaml)"
    )


# --------------------------------------------------------------------------- html


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_html_escapes_and_loads_nothing(board: Path) -> None:
    page = (board / "site" / "index.html").read_text(encoding="utf-8")
    tags = parse(page)
    assert "<script>alert" not in page and "<i>Labs" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (Pipes | and [links](javascript:alert(1)))" in page
    assert "A &amp; B &lt;i&gt;Labs&lt;/i&gt;" in page
    scripts = [a for t, a in tags.tags if t == "script"]
    assert len(scripts) == 1 and "src" not in scripts[0]  # our own inline script only
    assert not [t for t, _ in tags.tags if t in ("link", "img", "iframe", "object", "embed", "base")]
    hrefs = [a["href"] for t, a in tags.tags if t == "a"]
    assert hrefs and all(h.startswith(("../", "#")) for h in hrefs), hrefs
    assert "../recipes/nano/base.yaml" in hrefs and not any("javascript" in h for h in hrefs)
    assert not re.search(r"https?://", page)
    csp = [a for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0]["content"].startswith("default-src 'none';")
    # Sort keys: the ablation's delta and its mark.
    weak = [a for t, a in tags.tags if t == "tr" and a.get("data-id") == "nano-weak-teacher-1.0.0"]
    assert weak
    assert 'class="delta down" data-sort="-0.08"' in page and "▼ -0.080 [-0.140, -0.021]" in page
    assert 'class="delta up" data-sort="0.068"' in page and 'class="delta flat" data-sort="0.006"' in page


def plot_series(page: str, plot_id: str) -> dict[str, str]:
    """{benchmark: markup of its series} inside one plot SVG."""
    svg = re.search(rf'<svg id="{plot_id}".*?</svg>', page, re.S)
    assert svg, plot_id
    parts = re.split(r'<g class="series" data-benchmark="([^"]*)"', svg.group(0))[1:]
    return dict(zip(parts[0::2], parts[1::2]))


def test_html_plots(board: Path) -> None:
    page = (board / "site" / "index.html").read_text(encoding="utf-8")
    rows, compute = plot_series(page, "plot-rows"), plot_series(page, "plot-compute")
    # The most reported benchmark first (shown), the others hidden until selected.
    assert list(rows) == list(compute) == ["nano-bench", "gsm8k", "math500"]
    assert not rows["nano-bench"].startswith(' display="none"') and rows["gsm8k"].startswith(' display="none"')
    assert rows["nano-bench"].count("<circle") == 4 and compute["nano-bench"].count("<circle") == 4
    assert rows["nano-bench"].count('class="edge"') == 3  # base -> each of its three ablations
    assert rows["nano-bench"].count('class="errorbar"') == 4
    assert rows["gsm8k"].count("<circle") == 2 and rows["gsm8k"].count('class="edge"') == 1
    # small-long-cot has no compute: one point, and a note saying one is left out.
    assert compute["gsm8k"].count("<circle") == 1 and "1 submission without device hours not shown" in compute["gsm8k"]
    assert rows["math500"].count("<circle") == 1
    assert 'fill="#1f77b4"' in rows["nano-bench"] and 'fill="#d62728"' in rows["gsm8k"]
    assert '<option value="gsm8k">gsm8k pass@1</option>' in page


# --------------------------------------------------------------------------- files


def test_output_is_deterministic_and_independent_of_location(tmp_path: Path) -> None:
    a = make_board(tmp_path / "a")
    first = {p: (a / p).read_bytes() for p in ("community/LEADERBOARD.md", "site/index.html")}
    assert main(["--root", str(a)]) == 0
    b = make_board(tmp_path / "elsewhere" / "b")
    for path, data in first.items():
        assert (a / path).read_bytes() == data
        assert (b / path).read_bytes() == data
    # No temporary file is left beside the outputs.
    assert sorted(p.name for p in (a / "site").iterdir()) == ["index.html"]
    assert sorted(p.name for p in (a / "community").iterdir()) == ["LEADERBOARD.md", "submissions"]


def test_check_reports_a_stale_leaderboard(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(board), "--check"]) == 0
    record_path = board / "community" / "submissions" / "nano-base-1.0.0.json"
    record = json.loads(record_path.read_text())
    record["results"]["nano-bench"]["mean"] = 0.5
    record_path.write_text(json.dumps(record))
    before = (board / "site" / "index.html").read_bytes()
    assert main(["--root", str(board), "--check"]) == 1
    assert "leaderboard is stale" in capsys.readouterr().err
    assert (board / "site" / "index.html").read_bytes() == before  # --check writes nothing
    assert main(["--root", str(board)]) == 0
    assert main(["--root", str(board), "--check"]) == 0


def test_out_paths(tmp_path: Path) -> None:
    root = make_board(tmp_path / "repo")
    out_md, out_html = tmp_path / "x" / "board.md", tmp_path / "y" / "page.html"
    assert main(["--root", str(root), "--out-md", str(out_md), "--out-html", str(out_html)]) == 0
    assert out_md.read_bytes() == (root / "community" / "LEADERBOARD.md").read_bytes()
    assert out_html.read_bytes() == (root / "site" / "index.html").read_bytes()


def test_missing_fields_and_ties(tmp_path: Path) -> None:
    records = {
        "bare": {"schema_version": 1, "id": "bare", "track": "nano"},
        "no-mean": {"schema_version": 1, "id": "no-mean", "track": "nano",
                    "results": {"nano-bench": {"metric": "pass@1", "mean": None}}, "comparison": None,
                    "compute": {"device_hours": "lots"}, "contributors": None},
        "a": {"schema_version": 1, "id": "a", "track": "nano", "recipe": {"name": "a", "version": "1"},
              "results": {"nano-bench": {"mean": 0.5}}, "parent": {"id": "nowhere-1.0.0"},
              "comparison": {"parent": "nowhere-1.0.0", "benchmarks": {"nano-bench": {"delta": 0.1}}}},
        "b": {"schema_version": 1, "id": "b", "track": "nano", "recipe": {"name": "b", "version": "1"},
              "results": {"nano-bench": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}},
              "dataset": {"rows": 10}, "compute": {"device_hours": 1.0}},
        "c": {"schema_version": 1, "id": "c", "track": "nano", "recipe": {"name": "c", "version": "1"},
              "results": {"nano-bench": {"mean": 0.25}}},
    }
    root = make_board(tmp_path / "repo", records)
    md = (root / "community" / "LEADERBOARD.md").read_text(encoding="utf-8")
    table = md_tables(md)["nano"]
    # Equal means share a rank; the next rank skips; no score: unranked, last.
    assert [(r[0], r[1]) for r in table[1:]] == [("1", "a 1"), ("1", "b 1"), ("3", "c 1"), ("–", "bare"), ("–", "no-mean")]
    a = row_of(table, "a 1")
    # Delta without an interval or a flag: not significant, no interval shown.
    # No record names a metric for it: the header says only the benchmark.
    assert a["Δ nano-bench vs parent"] == "· +0.100" and a["nano-bench [CI]"] == "0.500"
    assert a["parent"] == "nowhere-1.0.0"
    assert row_of(table, "no-mean")["device hours"] == "–"
    page = (root / "site" / "index.html").read_text(encoding="utf-8")
    # Only b has rows and compute; the parent of a is not on the board: no line.
    assert plot_series(page, "plot-rows")["nano-bench"].count("<circle") == 1
    assert 'class="edge"' not in page


def test_unreadable_submission_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subs = tmp_path / "community" / "submissions"
    subs.mkdir(parents=True)
    (subs / "broken.json").write_text("{not json")
    assert main(["--root", str(tmp_path)]) == 1
    assert "broken.json" in capsys.readouterr().err
    assert not (tmp_path / "site" / "index.html").exists()
    (subs / "broken.json").write_text(json.dumps({"schema_version": 99, "id": "x"}))
    assert main(["--root", str(tmp_path)]) == 1
    assert "schema_version 99" in capsys.readouterr().err


def test_no_submissions(tmp_path: Path) -> None:
    assert main(["--root", str(tmp_path)]) == 0
    assert "No submissions yet" in (tmp_path / "community" / "LEADERBOARD.md").read_text(encoding="utf-8")
    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "No submissions yet" in page and "<svg" not in page


def test_committed_leaderboard_is_current() -> None:
    """community/LEADERBOARD.md and site/index.html are what `make leaderboard` writes
    from the committed submissions: after adding a submission, run it and commit both."""
    md, page = leaderboard.render(ROOT)
    assert (ROOT / "community" / "LEADERBOARD.md").read_text(encoding="utf-8") == md, "run `make leaderboard`"
    assert (ROOT / "site" / "index.html").read_text(encoding="utf-8") == page, "run `make leaderboard`"


# --------------------------------------------------------------------------- the page in Chromium

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
NANO = (0x1F, 0x77, 0xB4)  # leaderboard.TRACK_COLOURS[0], the nano track's points
SMALL = (0xD6, 0x27, 0x28)


def _need(what: str, available: bool) -> None:
    """Skip without `what` on a developer machine; under CI (CI=true) it is a failure:
    .ci/run installs Debian's chromium and `make install` the dev extra."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI")
    pytest.skip(f"{what} is not installed (apt-get install chromium; pip install -e '.[dev]')")


def _colour_pixels(image, box: tuple[int, int, int, int], rgb: tuple[int, int, int], tol: int = 6) -> int:
    region = image.crop(box).convert("RGB")
    return sum(
        count
        for count, px in region.getcolors(maxcolors=1 << 24)
        if all(abs(a - b) <= tol for a, b in zip(px, rgb))
    )


@pytest.mark.timeout(180)
def test_page_in_headless_chromium(board: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    _need("Debian's chromium", chromium is not None)
    try:
        from PIL import Image
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _need(f"the dev extra ({exc.name})", False)

    page_path = board / "site" / "index.html"
    shot = tmp_path / "leaderboard.png"
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())

            def order(track: str) -> list[str]:
                return page.eval_on_selector_all(f"#track-{track} tbody tr", "rs => rs.map(r => r.dataset.id)")

            def click(track: str, header: str) -> None:
                page.locator(f"#track-{track} thead").get_by_role("button", name=header, exact=True).click()

            def aria(track: str) -> dict[str, str]:
                return page.eval_on_selector_all(
                    f"#track-{track} thead th[aria-sort]",
                    "ths => Object.fromEntries(ths.map(t => [t.textContent, t.getAttribute('aria-sort')]))",
                )

            assert order("nano") == NANO_RANKED and aria("nano") == {"rank": "ascending"}
            # By dataset rows first, so that sorting by the score has to change the order.
            click("nano", "SFT rows")
            assert order("nano") == [
                "nano-no-verify-1.0.0", "nano-self-consistency-1.0.0", "nano-base-1.0.0", "nano-weak-teacher-1.0.0",
            ]
            click("nano", "nano-bench pass@1")  # numbers: highest first
            assert order("nano") == NANO_RANKED
            assert aria("nano") == {"nano-bench pass@1": "descending"}
            click("nano", "nano-bench pass@1")
            assert order("nano") == NANO_RANKED[::-1]
            assert aria("nano") == {"nano-bench pass@1": "ascending"}
            # The delta column: the root recipe has none and stays last both ways.
            click("nano", "Δ nano-bench")
            assert order("nano") == [
                "nano-self-consistency-1.0.0", "nano-no-verify-1.0.0", "nano-weak-teacher-1.0.0", "nano-base-1.0.0",
            ]
            click("nano", "Δ nano-bench")
            assert order("nano") == [
                "nano-weak-teacher-1.0.0", "nano-no-verify-1.0.0", "nano-self-consistency-1.0.0", "nano-base-1.0.0",
            ]
            # Text columns sort A to Z first.
            click("nano", "submission")
            assert order("nano") == sorted(NANO_RANKED)
            # A missing score is last whichever way the column is sorted.
            click("small", "math500 pass@1")
            assert order("small") == ["small-base-1.0.0", "small-long-cot-1.0.0"]
            click("small", "math500 pass@1")
            assert order("small") == ["small-base-1.0.0", "small-long-cot-1.0.0"]
            click("small", "gsm8k pass@1")
            assert order("small") == ["small-long-cot-1.0.0", "small-base-1.0.0"]
            assert order("nano") == sorted(NANO_RANKED)  # the other table is left alone

            def visible(plot: str, what: str) -> int:
                return page.locator(f"#{plot} g.series:not([display]) {what}").count()

            assert visible("plot-rows", "circle") == 4 and visible("plot-rows", "line.edge") == 3
            assert visible("plot-compute", "circle") == 4 and visible("plot-compute", "line.edge") == 3
            page.select_option("#plot-benchmark", "gsm8k")
            assert visible("plot-rows", "circle") == 2 and visible("plot-compute", "circle") == 1
            page.select_option("#plot-benchmark", "nano-bench")
            assert visible("plot-rows", "circle") == 4

            geometry = page.evaluate(
                """() => {
                  const box = el => { const r = el.getBoundingClientRect();
                    return [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]; };
                  return {
                    page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
                    plots: ["plot-rows", "plot-compute"].map(id => box(document.getElementById(id))),
                    points: [...document.querySelectorAll("svg.plot g.series:not([display]) circle")].map(c => {
                      const b = box(c); return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]; }),
                  };
                }"""
            )
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert requests and all(url.startswith("file://") for url in requests), requests

    image = Image.open(shot)
    assert image.format == "PNG" and image.size == tuple(geometry["page"])
    assert image.size[0] >= 1200 and image.size[1] > 900
    rgb = image.convert("RGB")
    for plot in geometry["plots"]:
        box = tuple(round(v) for v in plot)
        assert box[2] - box[0] >= 500 and box[3] - box[1] >= 300
        # Not blank: the grid, axes, labels and points give many colours; the nano
        # points and error bars are drawn in the nano colour, and no small-track point
        # is shown while nano-bench is selected.
        assert len(rgb.crop(box).getcolors(maxcolors=1 << 24)) > 20
        assert _colour_pixels(rgb, box, NANO) >= 4 * 60
        assert _colour_pixels(rgb, box, SMALL) == 0
    assert len(geometry["points"]) == 8
    for x, y in geometry["points"]:  # each point is painted where the DOM says it is
        px = rgb.getpixel((round(x), round(y)))
        assert all(abs(a - b) <= 6 for a, b in zip(px, NANO)), (x, y, px)
