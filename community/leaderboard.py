"""The community leaderboard: `community/LEADERBOARD.md` and `site/index.html`.

`make leaderboard` (`python -m community leaderboard`) reads every submission
record under `<root>/community/submissions/*.json` and writes

* `community/LEADERBOARD.md`: one table per track, ranked by the track's primary
  benchmark (the one most of its submissions report), with each ablation's paired
  difference from its parent;
* `site/index.html`: the same tables, sortable by any column with a click, and two
  plots (score against dataset rows, score against device hours) with the eval's
  intervals as error bars and a line from each parent to its ablations. The page is
  one self-contained file: no script, font, style or image is fetched, and its
  Content-Security-Policy forbids the browser to fetch anything, so it works from
  `file://` offline.

The output depends only on the submission records (no clock, no environment), so
the same records give byte-identical files and `--check` can tell CI that the
committed leaderboard is stale.

Strings from submissions (names, institutions, ids, paths) come from pull requests:
everything is escaped for Markdown or HTML where it is written, and a recipe path is
only turned into a link when it is a plain relative path.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

SUBMISSIONS_DIR = Path("community") / "submissions"
DEFAULT_MD = Path("community") / "LEADERBOARD.md"
DEFAULT_HTML = Path("site") / "index.html"
SUPPORTED_SCHEMA_VERSIONS = (1,)

MISSING = "–"  # en dash: a value the submission does not report
UP, DOWN, FLAT = "▲", "▼", "·"

# One colour per track (sorted by name), cycling past ten tracks.
TRACK_COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
)

SIGNIFICANCE_NOTE = (
    "Intervals are those recorded by the eval harness (95% bootstrap intervals by default). "
    "The significance marks come from a paired bootstrap over the eval's problems and samples; "
    "they do not cover training-seed noise. On the nano track, retraining the base recipe with "
    "another seed moved pass@1 from 0.41 to 0.48, more than most ablation effects, so compare "
    "rows of several seeds before concluding."
)
LEGEND = (
    f"{UP} significantly higher than the parent, {DOWN} significantly lower, "
    f"{FLAT} no significant difference (paired bootstrap); {MISSING} not reported."
)


class LeaderboardError(Exception):
    """A submission file that cannot be read as a submission record."""


# --------------------------------------------------------------------------- model


def _num(value: Any) -> float | None:
    """A finite number, or None for anything else (missing, null, text, NaN, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Score:
    metric: str
    mean: float
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Delta:
    """The paired comparison of one benchmark against the parent."""

    delta: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    significant: bool

    @property
    def mark(self) -> str:
        if not self.significant:
            return FLAT
        return UP if self.delta > 0 else DOWN if self.delta < 0 else FLAT


@dataclass
class Entry:
    """One submission, normalised: every field may be missing except id and track."""

    id: str
    track: str
    name: str
    version: str
    recipe_path: str
    parent_id: str
    compared_to: str  # the parent id the paired comparison was made against
    scores: dict[str, Score]
    deltas: dict[str, Delta]
    rows: float | None
    dataset_repo: str
    device_hours: float | None
    devices: float | None
    device_type: str
    teacher_tokens: float | None
    contributors: list[tuple[str, str]]
    date: str
    rank: int | None = None
    order: int = 0  # position in the ranked table (the page's default order)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip() if self.name else self.id


@dataclass
class Track:
    name: str
    colour: str
    benchmarks: list[str]
    metrics: dict[str, str]
    primary: str | None
    entries: list[Entry] = field(default_factory=list)


def _entry(record: dict[str, Any], fallback_id: str) -> Entry:
    recipe = _dict(record.get("recipe"))
    parent = _dict(record.get("parent"))
    dataset = _dict(record.get("dataset"))
    compute = _dict(record.get("compute"))
    comparison = _dict(record.get("comparison"))

    scores: dict[str, Score] = {}
    for bench, result in sorted(_dict(record.get("results")).items()):
        result = _dict(result)
        mean = _num(result.get("mean"))
        if mean is None:
            continue
        scores[str(bench)] = Score(
            _str(result.get("metric")), mean, _num(result.get("ci_low")), _num(result.get("ci_high"))
        )

    deltas: dict[str, Delta] = {}
    for bench, cmp in sorted(_dict(comparison.get("benchmarks")).items()):
        cmp = _dict(cmp)
        delta = _num(cmp.get("delta"))
        if delta is None:
            continue
        low, high = _num(cmp.get("ci_low")), _num(cmp.get("ci_high"))
        significant = cmp.get("significant")
        if not isinstance(significant, bool):
            # An older or hand-made record: significant when the interval excludes zero.
            significant = low is not None and high is not None and (low > 0 or high < 0)
        deltas[str(bench)] = Delta(delta, low, high, _num(cmp.get("p_value")), significant)

    contributors = []
    for person in record.get("contributors") or []:
        person = _dict(person)
        if _str(person.get("name")) or _str(person.get("institution")):
            contributors.append((_str(person.get("name")), _str(person.get("institution"))))

    return Entry(
        id=_str(record.get("id")) or fallback_id,
        track=_str(record.get("track")) or "unassigned",
        name=_str(recipe.get("name")),
        version=_str(recipe.get("version")),
        recipe_path=_str(recipe.get("path")),
        parent_id=_str(parent.get("id")),
        compared_to=_str(comparison.get("parent")) or _str(parent.get("id")),
        scores=scores,
        deltas=deltas,
        rows=_num(dataset.get("rows")),
        dataset_repo=_str(dataset.get("repo")),
        device_hours=_num(compute.get("device_hours")),
        devices=_num(compute.get("devices")),
        device_type=_str(compute.get("device_type")),
        teacher_tokens=_num(compute.get("teacher_tokens")),
        contributors=contributors,
        date=_str(record.get("date")),
    )


def load_submissions(root: Path) -> list[dict[str, Any]]:
    """The records under <root>/community/submissions/*.json, by file name.

    Only the `.json` records are read (a `.details.parquet` beside them is not).
    A file that is not a JSON object, or of an unknown schema_version, is an error:
    a leaderboard that silently drops a submission is worse than none."""
    directory = Path(root) / SUBMISSIONS_DIR
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LeaderboardError(f"{path}: not a readable JSON file: {exc}") from exc
        if not isinstance(record, dict):
            raise LeaderboardError(f"{path}: a submission record is a JSON object")
        version = record.get("schema_version", 1)
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise LeaderboardError(
                f"{path}: schema_version {version!r} is not one this leaderboard reads "
                f"({', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})"
            )
        record.setdefault("id", path.stem)
        records.append(record)
    return records


def build_tracks(records: Iterable[dict[str, Any]]) -> list[Track]:
    """Group submissions by track and rank each track by its primary benchmark.

    The primary benchmark is the one most of the track's submissions report (ties:
    alphabetical). Higher mean ranks first, equal means share a rank, and a
    submission without the primary benchmark is listed last, unranked."""
    entries = [_entry(r, _str(r.get("id"))) for r in records]
    by_track: dict[str, list[Entry]] = {}
    for entry in entries:
        by_track.setdefault(entry.track, []).append(entry)

    tracks = []
    for i, name in enumerate(sorted(by_track)):
        members = by_track[name]
        counts = Counter(b for e in members for b in e.scores)
        benchmarks = sorted(counts, key=lambda b: (-counts[b], b))
        primary = benchmarks[0] if benchmarks else None
        metrics = {}
        for bench in benchmarks:
            names = sorted({e.scores[bench].metric for e in members if bench in e.scores} - {""})
            metrics[bench] = "/".join(names)

        def key(e: Entry) -> tuple:
            score = e.scores.get(primary) if primary else None
            return (score is None, -(score.mean if score else 0.0), e.id)

        members.sort(key=key)
        previous: tuple[float, int] | None = None
        for position, entry in enumerate(members):
            entry.order = position
            score = entry.scores.get(primary) if primary else None
            if score is None:
                continue
            if previous is not None and previous[0] == score.mean:
                entry.rank = previous[1]
            else:
                entry.rank = position + 1
            previous = (score.mean, entry.rank)
        tracks.append(Track(name, TRACK_COLOURS[i % len(TRACK_COLOURS)], benchmarks, metrics, primary, members))
    return tracks


# --------------------------------------------------------------------------- formatting


def _fixed(x: float, digits: int = 3, sign: bool = False) -> str:
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    if float(text) == 0:  # no "-0.000"
        text = text.replace("-", "+" if sign else "")
    return text


def fmt_score(score: Score | None) -> str:
    if score is None:
        return MISSING
    if score.ci_low is None or score.ci_high is None:
        return _fixed(score.mean)
    return f"{_fixed(score.mean)} [{_fixed(score.ci_low)}, {_fixed(score.ci_high)}]"


def fmt_delta(delta: Delta | None) -> str:
    """'▲ +0.068 [+0.010, +0.120]': mark, paired difference, its interval."""
    if delta is None:
        return MISSING
    text = f"{delta.mark} {_fixed(delta.delta, sign=True)}"
    if delta.ci_low is not None and delta.ci_high is not None:
        text += f" [{_fixed(delta.ci_low, sign=True)}, {_fixed(delta.ci_high, sign=True)}]"
    return text


def fmt_count(x: float | None) -> str:
    if x is None:
        return MISSING
    return f"{int(round(x)):,}" if abs(x - round(x)) < 1e-9 else f"{x:,.1f}"


def fmt_hours(x: float | None) -> str:
    if x is None:
        return MISSING
    if x == 0:
        return "0"
    # At most three significant figures, never scientific notation: 0.06, 0.125, 48, 1,234.
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_devices(entry: Entry) -> str:
    if entry.devices is None and not entry.device_type:
        return ""
    count = fmt_count(entry.devices) if entry.devices is not None else "?"
    return f"{count}× {entry.device_type or 'device'}"


def contributors_text(entry: Entry) -> str:
    parts = []
    for name, institution in entry.contributors:
        if name and institution:
            parts.append(f"{name} ({institution})")
        else:
            parts.append(name or institution)
    return ", ".join(parts)


_SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")


def safe_repo_path(path: str) -> str | None:
    """`path` when it is a plain relative path inside the repository (so it can be
    linked as ../<path>), else None: no scheme, no '..', no absolute path, no spaces."""
    if not path or not _SAFE_PATH.fullmatch(path) or ".." in path.split("/") or "//" in path:
        return None
    return path


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: str) -> str:
    """Text for a Markdown table cell: HTML-escaped (so no tag survives), Markdown
    punctuation backslash-escaped (so '|' cannot open a column and '[x](y)' is no
    link), and on one line."""
    text = " ".join(text.split())
    text = html.escape(text, quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def h(text: str) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(text, quote=True)


# --------------------------------------------------------------------------- markdown


def render_markdown(tracks: list[Track]) -> str:
    entries = [e for t in tracks for e in t.entries]
    lines = [
        "# Community leaderboard",
        "",
        "Generated by `make leaderboard` from `community/submissions/*.json`: do not edit by hand.",
        "The interactive version, sortable by any column and with plots of score against dataset "
        "size and against compute, is [`site/index.html`](../site/index.html).",
        "",
    ]
    if not entries:
        lines += ["No submissions yet. `CONTRIBUTING.md` says how to submit one.", ""]
        return "\n".join(lines)
    newest = max((e.date for e in entries if e.date), default="")
    lines += [
        f"{len(entries)} submission{'s' if len(entries) != 1 else ''} in {len(tracks)} "
        f"track{'s' if len(tracks) != 1 else ''}" + (f"; newest {md_escape(newest)}." if newest else "."),
        "",
    ]
    for track in tracks:
        name = " ".join(track.name.replace("`", "").split())
        lines += [f"## Track `{name}`", ""]
        if track.primary:
            lines += [
                f"Ranked by {md_escape(track.primary)} {md_escape(track.metrics.get(track.primary, ''))}"
                .rstrip() + " (mean, higher first). Each ablation's Δ is its paired difference from its "
                "parent on the same problems.",
                "",
            ]
        header = ["rank", "submission", "parent"]
        align = ["---:", "---", "---"]
        for bench in track.benchmarks:
            metric = track.metrics.get(bench, "")
            header.append(md_escape(f"{bench} {metric}".strip()) + " [CI]")
            header.append(f"Δ {md_escape(bench)} vs parent")
            align += ["---", "---"]
        header += ["SFT rows", "device hours", "teacher tokens", "contributors", "date"]
        align += ["---:", "---:", "---:", "---", "---"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(align) + "|")
        for e in track.entries:
            path = safe_repo_path(e.recipe_path)
            label = md_escape(e.label)
            submission = f"[{label}](../{path})" if path else label
            cells = [
                str(e.rank) if e.rank is not None else MISSING,
                submission,
                md_escape(e.parent_id) if e.parent_id else MISSING,
            ]
            for bench in track.benchmarks:
                cells.append(fmt_score(e.scores.get(bench)))
                cells.append(fmt_delta(e.deltas.get(bench)) if e.compared_to else "")
            hours = fmt_hours(e.device_hours)
            if e.device_hours is not None and fmt_devices(e):
                hours += f" ({md_escape(fmt_devices(e))})"
            cells += [
                fmt_count(e.rows),
                hours,
                fmt_count(e.teacher_tokens),
                md_escape(contributors_text(e)) or MISSING,
                md_escape(e.date) or MISSING,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"{LEGEND}", "", f"{SIGNIFICANCE_NOTE}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _linear_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    lo = math.floor(lo / step + 1e-9) * step
    hi = math.ceil(hi / step - 1e-9) * step
    n = int(round((hi - lo) / step))
    return lo, hi, [lo + i * step for i in range(n + 1)]


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    ticks = []
    for p in range(a, b + 1):
        for m in ((1, 2, 5) if b - a <= 3 else (1,)):
            t = m * 10.0**p
            if 10.0**a <= t <= 10.0**b:
                ticks.append(t)
    return 10.0**a, 10.0**b, ticks


def _tick_label(t: float, unit: float) -> str:
    """A tick label in the axis's unit (1, 1e3 'k' or 1e6 'M', one per axis)."""
    suffix = {1e3: "k", 1e6: "M"}.get(unit, "")
    return f"{t / unit:.6g}{suffix}"


class _Axis:
    def __init__(self, values: list[float], start: float, end: float, allow_log: bool):
        lo, hi = min(values), max(values)
        self.log = allow_log and lo > 0 and hi / lo >= 20
        # A margin of 5% of the span on each side, so no point sits on the frame.
        if self.log:
            pad = (hi / lo) ** 0.05
            self.lo, self.hi, self.ticks = _log_ticks(lo / pad, hi * pad)
        else:
            pad = (hi - lo) * 0.05
            # ...but an axis of non-negative values (scores, rows) does not go below 0.
            self.lo, self.hi, self.ticks = _linear_ticks(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
        self.start, self.end = start, end
        top = max(abs(self.lo), abs(self.hi))
        self.unit = 1e6 if top >= 1e6 else 1e3 if top >= 1e4 else 1.0

    def __call__(self, v: float) -> float:
        if self.log:
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.start + f * (self.end - self.start)


def _c(x: float) -> str:
    """A coordinate for the SVG text: one decimal, so the output is stable."""
    return _fixed(x, 1)


PLOT_W, PLOT_H = 600, 360
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 20, 20, 52


def _plot_series(
    tracks: list[Track], bench: str, x_of, x_label: str, y_label: str, key: str, visible: bool
) -> tuple[str, int]:
    """One benchmark's plot: an SVG <g> with axes, parent→ablation lines, error bars
    and points. Returns the markup and the number of points drawn."""
    points = []  # (entry, colour, x, score)
    left_out = 0
    for track in tracks:
        for e in track.entries:
            score = e.scores.get(bench)
            if score is None:
                continue
            x = x_of(e)
            if x is None:
                left_out += 1
                continue
            points.append((e, track.colour, x, score))
    out = [f'<g class="series" data-benchmark="{h(key)}"' + ("" if visible else ' display="none"') + ">"]
    if not points:
        out.append(
            f'<text x="{PLOT_W // 2}" y="{PLOT_H // 2}" text-anchor="middle" class="empty">'
            f"no submission reports both {h(bench)} and {h(x_label)}</text></g>"
        )
        return "\n".join(out), 0
    ys = [s.mean for *_, s in points]
    ys += [s.ci_low for *_, s in points if s.ci_low is not None]
    ys += [s.ci_high for *_, s in points if s.ci_high is not None]
    xa = _Axis([p[2] for p in points], MARGIN_L, PLOT_W - MARGIN_R, allow_log=True)
    ya = _Axis(ys, PLOT_H - MARGIN_B, MARGIN_T, allow_log=False)
    x0, x1, y0, y1 = MARGIN_L, PLOT_W - MARGIN_R, PLOT_H - MARGIN_B, MARGIN_T

    out.append('<g class="grid">')
    for t in ya.ticks:
        y = _c(ya(t))
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y}" y2="{y}"/>')
    for t in xa.ticks:
        x = _c(xa(t))
        out.append(f'<line x1="{x}" x2="{x}" y1="{y0}" y2="{y1}"/>')
    out.append("</g>")
    out.append('<g class="axis">')
    out.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/><line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/>')
    for t in ya.ticks:
        out.append(f'<text x="{x0 - 6}" y="{_c(ya(t) + 4)}" text-anchor="end">{_tick_label(t, ya.unit)}</text>')
    for t in xa.ticks:
        out.append(f'<text x="{_c(xa(t))}" y="{y0 + 16}" text-anchor="middle">{_tick_label(t, xa.unit)}</text>')
    scale = " (log scale)" if xa.log else ""
    out.append(
        f'<text x="{_c((x0 + x1) / 2)}" y="{PLOT_H - 12}" text-anchor="middle" class="label">'
        f"{h(x_label)}{scale}</text>"
    )
    out.append(
        f'<text transform="translate(16 {_c((y0 + y1) / 2)}) rotate(-90)" text-anchor="middle" '
        f'class="label">{h(y_label)}</text>'
    )
    out.append("</g>")

    # Lines from each parent to its ablations (both must be on this plot).
    where = {e.id: (xa(x), ya(s.mean)) for e, _, x, s in points}
    out.append('<g class="edges">')
    for e, _, x, s in points:
        parent = e.parent_id
        if parent and parent in where and parent != e.id:
            px, py = where[parent]
            cx, cy = where[e.id]
            out.append(
                f'<line class="edge" data-parent="{h(parent)}" data-child="{h(e.id)}" '
                f'x1="{_c(px)}" y1="{_c(py)}" x2="{_c(cx)}" y2="{_c(cy)}"/>'
            )
    out.append("</g>")

    for e, colour, x, s in points:
        cx, cy = _c(xa(x)), _c(ya(s.mean))
        tip = f"{e.label} ({e.track}): {bench} {fmt_score(s)}; {x_label} {x:,.6g}"
        if e.parent_id:
            tip += f"; parent {e.parent_id}"
            if bench in e.deltas:
                tip += f", Δ {fmt_delta(e.deltas[bench])}"
        out.append(f'<g class="point" data-id="{h(e.id)}" data-track="{h(e.track)}">')
        out.append(f"<title>{h(tip)}</title>")
        if s.ci_low is not None and s.ci_high is not None:
            lo, hi = _c(ya(s.ci_low)), _c(ya(s.ci_high))
            a, b = _c(xa(x) - 4), _c(xa(x) + 4)
            out.append(
                f'<path class="errorbar" stroke="{colour}" '
                f'd="M{cx} {lo}V{hi}M{a} {lo}H{b}M{a} {hi}H{b}"/>'
            )
        out.append(f'<circle cx="{cx}" cy="{cy}" r="6" fill="{colour}"/>')
        out.append("</g>")
    if left_out:
        out.append(
            f'<text x="{x1}" y="{y1 + 12}" text-anchor="end" class="note">'
            f"{left_out} submission{'s' if left_out != 1 else ''} without {h(x_label)} not shown</text>"
        )
    out.append("</g>")
    return "\n".join(out), len(points)


def plot_benchmarks(tracks: list[Track]) -> list[tuple[str, str]]:
    """(benchmark, label) for the plots' selector: every benchmark, the most reported first."""
    counts = Counter(b for t in tracks for e in t.entries for b in e.scores)
    metrics: dict[str, set[str]] = {}
    for t in tracks:
        for b, m in t.metrics.items():
            metrics.setdefault(b, set()).update(x for x in m.split("/") if x)
    out = []
    for bench in sorted(counts, key=lambda b: (-counts[b], b)):
        metric = "/".join(sorted(metrics.get(bench, ())))
        out.append((bench, f"{bench} {metric}".strip()))
    return out


def render_plot(tracks: list[Track], plot_id: str, x_of, x_label: str, title: str) -> str:
    parts = [
        f'<figure class="plot"><figcaption>{h(title)}</figcaption>',
        f'<svg id="{plot_id}" class="plot" viewBox="0 0 {PLOT_W} {PLOT_H}" width="{PLOT_W}" '
        f'height="{PLOT_H}" role="img" aria-label="{h(title)}">',
    ]
    for i, (bench, label) in enumerate(plot_benchmarks(tracks)):
        series, _ = _plot_series(tracks, bench, x_of, x_label, label, bench, visible=i == 0)
        parts.append(series)
    parts.append("</svg></figure>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- html

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1b1f23; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.lede, .note-text { color: #57606a; max-width: 70em; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
.table-wrap { overflow-x: auto; }
td.nowrap { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.score, td.delta { font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid #0969da; }
/* The arrow is decoration (empty alt text after "/"): aria-sort tells assistive technology. */
th[aria-sort="ascending"] button::after { content: " \\25B2"; content: " \\25B2" / ""; }
th[aria-sort="descending"] button::after { content: " \\25BC"; content: " \\25BC" / ""; }
tr:target { background: #fff8c5; }
.up { color: #1a7f37; } .down { color: #cf222e; } .flat { color: #57606a; }
.track-dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; }
.plots { display: flex; flex-wrap: wrap; gap: 24px; }
figure.plot { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.plot { background: #fff; border: 1px solid #d0d7de; }
svg.plot text { font: 11px system-ui, sans-serif; fill: #57606a; }
svg.plot text.label { font-size: 12px; fill: #1b1f23; }
svg.plot .grid line { stroke: #eaeef2; }
svg.plot .axis line { stroke: #57606a; }
svg.plot .edge { stroke: #8c959f; stroke-dasharray: 4 3; stroke-width: 1.5; }
svg.plot .errorbar { stroke-width: 1.5; fill: none; }
.legend span { margin-right: 16px; }
a { color: #0969da; }
"""

# Sorting: a click on a header sorts its table by that column; a second click reverses.
# Numbers sort high-to-low first, text A-to-Z first; a missing value is last either way;
# equal keys keep the ranked order. Cells carry their sort key in data-sort.
_JS = """
(function () {
  "use strict";
  function cmp(a, b) { return a < b ? -1 : a > b ? 1 : 0; }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "number";
        var current = th.getAttribute("aria-sort");
        var dir = current === "descending" ? "ascending"
          : current === "ascending" ? "descending"
          : (numeric ? "descending" : "ascending");
        heads.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (ra, rb) {
          var a = ra.cells[col].getAttribute("data-sort") || "";
          var b = rb.cells[col].getAttribute("data-sort") || "";
          var order = cmp(+ra.getAttribute("data-order"), +rb.getAttribute("data-order"));
          if (a === "" || b === "") { return a === b ? order : (a === "" ? 1 : -1); }
          var c = numeric ? cmp(parseFloat(a), parseFloat(b)) : cmp(a.toLowerCase(), b.toLowerCase());
          return (dir === "descending" ? -c : c) || order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var select = document.getElementById("plot-benchmark");
  if (select) {
    select.addEventListener("change", function () {
      document.querySelectorAll("svg.plot g.series").forEach(function (g) {
        if (g.getAttribute("data-benchmark") === select.value) { g.removeAttribute("display"); }
        else { g.setAttribute("display", "none"); }
      });
    });
  }
})();
"""

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def _num_key(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _th(label: str, numeric: bool, title: str = "", sort: str | None = None) -> str:
    attrs = ' data-type="number"' if numeric else ""
    if sort:
        attrs += f' aria-sort="{sort}"'
    if title:
        attrs += f' title="{h(title)}"'
    return f'<th scope="col"{attrs}><button type="button">{h(label)}</button></th>'


def _delta_class(delta: Delta) -> str:
    return {UP: "up", DOWN: "down"}.get(delta.mark, "flat")


def render_track_table(track: Track) -> str:
    heads = [_th("rank", True, "ranked by " + (track.primary or "nothing"), sort="ascending")]
    heads += [_th("submission", False), _th("parent", False)]
    for bench in track.benchmarks:
        metric = track.metrics.get(bench, "")
        heads.append(_th(f"{bench} {metric}".strip(), True, "mean [interval]; click to sort by the mean"))
        heads.append(_th(f"Δ {bench}", True, "paired difference from the parent [interval], mark"))
    heads += [
        _th("SFT rows", True),
        _th("device hours", True),
        _th("teacher tokens", True),
        _th("contributors", False),
        _th("date", False),
    ]
    rows = []
    for e in track.entries:
        path = safe_repo_path(e.recipe_path)
        label = h(e.label)
        link = f'<a href="../{h(path)}">{label}</a>' if path else label
        cells = [
            f'<td class="num" data-sort="{_num_key(e.rank)}">{e.rank if e.rank is not None else MISSING}</td>',
            f'<td data-sort="{h(e.label)}" title="{h(e.id)}">{link}</td>',
        ]
        if e.parent_id:
            cells.append(f'<td class="nowrap" data-sort="{h(e.parent_id)}"><a href="#sub-{h(e.parent_id)}">{h(e.parent_id)}</a></td>')
        else:
            cells.append(f'<td data-sort="">{MISSING}</td>')
        for bench in track.benchmarks:
            s = e.scores.get(bench)
            cells.append(f'<td class="score" data-sort="{_num_key(s.mean if s else None)}">{h(fmt_score(s))}</td>')
            d = e.deltas.get(bench)
            if d is None:
                text = MISSING if e.compared_to else ""
                cells.append(f'<td class="delta" data-sort="">{text}</td>')
            else:
                tip = f"vs {e.compared_to}"
                if d.p_value is not None:
                    tip += f", p = {d.p_value:.3g}"
                tip += ", significant" if d.significant else ", not significant"
                cells.append(
                    f'<td class="delta {_delta_class(d)}" data-sort="{_num_key(d.delta)}" '
                    f'title="{h(tip)}">{h(fmt_delta(d))}</td>'
                )
        devices = fmt_devices(e)
        cells += [
            f'<td class="num" data-sort="{_num_key(e.rows)}" title="{h(e.dataset_repo)}">{fmt_count(e.rows)}</td>',
            f'<td class="num" data-sort="{_num_key(e.device_hours)}" title="{h(devices)}">'
            f"{h(fmt_hours(e.device_hours))}</td>",
            f'<td class="num" data-sort="{_num_key(e.teacher_tokens)}">{fmt_count(e.teacher_tokens)}</td>',
            f'<td data-sort="{h(contributors_text(e))}">{h(contributors_text(e)) or MISSING}</td>',
            f'<td class="nowrap" data-sort="{h(e.date)}">{h(e.date) or MISSING}</td>',
        ]
        rows.append(
            f'<tr id="sub-{h(e.id)}" data-id="{h(e.id)}" data-order="{e.order}">' + "".join(cells) + "</tr>"
        )
    return (
        f'<table class="sortable" id="track-{h(track.name)}" data-track="{h(track.name)}">\n'
        f"<thead><tr>{''.join(heads)}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    )


def render_html(tracks: list[Track]) -> str:
    entries = [e for t in tracks for e in t.entries]
    newest = max((e.date for e in entries if e.date), default="")
    body = []
    if not entries:
        body.append('<p class="lede">No submissions yet. <code>CONTRIBUTING.md</code> says how to submit one.</p>')
    else:
        summary = (
            f"{len(entries)} submission{'s' if len(entries) != 1 else ''} in {len(tracks)} "
            f"track{'s' if len(tracks) != 1 else ''}" + (f"; newest {h(newest)}." if newest else ".")
        )
        body.append(
            f'<p class="lede">{summary} Click a column header to sort by it (again to reverse). '
            "Each ablation's Δ is its paired difference from its parent on the same problems.</p>"
        )
        for track in tracks:
            body.append(
                f'<h2><span class="track-dot" style="background:{track.colour}"></span>'
                f"Track <code>{h(track.name)}</code></h2>"
            )
            body.append(f'<div class="table-wrap">{render_track_table(track)}</div>')
        body.append(f'<p class="note-text">{h(LEGEND)}</p>')
        body.append("<h2>Score against dataset size and compute</h2>")
        benches = plot_benchmarks(tracks)
        if len(benches) > 1:
            options = "".join(f'<option value="{h(b)}">{h(label)}</option>' for b, label in benches)
            body.append(f'<p><label>benchmark <select id="plot-benchmark">{options}</select></label></p>')
        legend = "".join(
            f'<span><span class="track-dot" style="background:{t.colour}"></span>{h(t.name)}</span>' for t in tracks
        )
        body.append(
            f'<p class="legend">{legend}<span>error bars: the eval\'s interval; '
            "dashed line: parent → ablation</span></p>"
        )
        body.append('<div class="plots">')
        body.append(render_plot(tracks, "plot-rows", lambda e: e.rows, "SFT rows", "score against dataset rows"))
        body.append(
            render_plot(
                tracks,
                "plot-compute",
                lambda e: e.device_hours if e.device_hours and e.device_hours > 0 else None,
                "device hours",
                "score against compute (device hours)",
            )
        )
        body.append("</div>")
        body.append(f'<p class="note-text">{h(SIGNIFICANCE_NOTE)}</p>')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>CommonThoughts community leaderboard</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        "<h1>CommonThoughts community leaderboard</h1>\n"
        '<p class="lede">Generated by <code>make leaderboard</code> from '
        "<code>community/submissions/*.json</code>.</p>\n" + "\n".join(body) + f"\n<script>{_JS}</script>\n"
        "</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- files and CLI


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and
    os.replace, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render(root: Path) -> tuple[str, str]:
    """(LEADERBOARD.md, index.html) for the submissions under `root`."""
    tracks = build_tracks(load_submissions(root))
    return render_markdown(tracks), render_html(tracks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m community leaderboard",
        description="Write community/LEADERBOARD.md and site/index.html from community/submissions/*.json.",
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: the current folder)")
    parser.add_argument("--out-md", type=Path, help=f"Markdown output (default: <root>/{DEFAULT_MD})")
    parser.add_argument("--out-html", type=Path, help=f"HTML output (default: <root>/{DEFAULT_HTML})")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if either output is missing or differs from what the submissions give",
    )
    args = parser.parse_args(argv)
    root = args.root
    out_md = args.out_md or root / DEFAULT_MD
    out_html = args.out_html or root / DEFAULT_HTML
    try:
        md, page = render(root)
    except LeaderboardError as exc:
        print(f"leaderboard: {exc}", file=sys.stderr)
        return 1
    if args.check:
        stale = [
            str(path)
            for path, text in ((out_md, md), (out_html, page))
            if not path.is_file() or path.read_text(encoding="utf-8") != text
        ]
        if stale:
            print(
                f"leaderboard is stale: {', '.join(stale)} differ from community/submissions; "
                "run `make leaderboard` and commit the result",
                file=sys.stderr,
            )
            return 1
        print("leaderboard is up to date")
        return 0
    write_atomic(out_md, md)
    write_atomic(out_html, page)
    print(f"wrote {out_md} and {out_html}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
