"""audit.html: one self-contained page (thumbnails embedded as JPEG data, no script, no request to anywhere) that
shows the summary, each duplicate group and each suspected label error, outlier and image issue as thumbnails with
their labels. Every piece of user text (paths, labels, class names) goes through html.escape."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from zoo.select.audit import KINDS

THUMB = 112  # pixels, the long side of a thumbnail
SHOWN = {"groups": 150, "label-error": 150, "outlier": 60, "image": 60}  # the page's limits; audit.csv has all

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;width:150px;font-size:12px;word-break:break-all}
.card img{display:block;margin:0 auto 4px;max-width:140px;max-height:140px}
.group{border:1px solid #ccc;border-radius:8px;padding:8px;margin:10px 0}
.tag{display:inline-block;border-radius:4px;padding:0 6px;margin-right:4px;font-size:12px;color:#fff}
.leak{background:#c0392b}.conflict{background:#8e44ad}.exact{background:#555}.near{background:#2c7fb8}
.kept{outline:2px solid #27ae60}.muted{color:#777}.given{color:#c0392b}.suggested{color:#27ae60}
"""


def _thumb(path: str) -> str:
    """An <img> with the image as embedded JPEG data, or a note when it cannot be read now."""
    from PIL import Image

    from zoo.data.images import open_rgb

    try:
        img = open_rgb(path, THUMB)
        img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=80)
    except Exception:  # a file that changed or vanished since the audit: the page still renders
        return '<div class="muted">(no preview)</div>'
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/jpeg;base64,{data}">'


def _card(path: str, lines: list[str], css: str = "") -> str:
    e = html.escape
    body = "<br>".join(lines)
    return f'<div class="card {css}" title="{e(path)}">{_thumb(path)}<b>{e(Path(path).name)}</b><br>{body}</div>'


def _summary(result) -> str:
    e = html.escape
    rows = "".join(f'<tr><td>{e(k)}</td><td class="n">{n}</td></tr>' for k, n in result.counts().items())
    leak = "".join(
        f'<tr><td>{e(pair.replace("-", " / "))}</td><td class="n">{v["groups"]}</td>'
        f'<td class="n">{v["images"]}</td></tr>'
        for pair, v in sorted(result.leakage.items())
    )
    leak_table = (
        f"<h2>Leakage between splits</h2><table><tr><th>splits</th><th>groups</th><th>images in the later split</th>"
        f"</tr>{leak}</table><p>{result.exact_leaks} val/test image(s) have exactly the same pixels as an image of an "
        "earlier split (what <code>zoo finetune</code> warns about).</p>"
        if leak
        else "<p>No duplicate crosses splits.</p>"
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    return f"<table><tr><th>issue</th><th>files</th></tr>{rows}</table>{leak_table}" + (
        f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""
    )


def _groups(result) -> str:
    e = html.escape
    groups = sorted(result.groups, key=lambda g: (not g.cross_split, not g.conflicting, g.id))
    parts = []
    for g in groups[: SHOWN["groups"]]:
        tags = f'<span class="tag {g.kind}">{g.kind}</span>'
        tags += '<span class="tag leak">crosses splits</span>' if g.cross_split else ""
        tags += '<span class="tag conflict">labels differ</span>' if g.conflicting else ""
        cards = "".join(
            _card(m["path"], [f"{e(m['split'])} · {e(m['label'])}", "kept" if i == 0 else "copy"], "kept" * (i == 0))
            for i, m in enumerate(g.members)
        )
        parts.append(f'<div class="group">group {g.id} {tags}<div class="cards">{cards}</div></div>')
    more = len(groups) - SHOWN["groups"]
    return "".join(parts) + (f'<p class="muted">and {more} more groups in audit.csv</p>' if more > 0 else "")


def _findings(findings, limit: int, label_error: bool = False) -> str:
    e = html.escape
    cards = []
    for f in findings[:limit]:
        lines = [f"{e(f.split or '-')} · score {f.score:.3g}"]
        if label_error:
            lines.append(f'given <span class="given">{e(f.label or "")}</span>')
            lines.append(f'suggested <span class="suggested">{e(f.suggested or "")}</span>')
        else:
            lines.append(f"{e(f.issue)}: {e(f.details)}")
        cards.append(_card(f.path, lines))
    more = len(findings) - limit
    tail = f'<p class="muted">and {more} more in audit.csv</p>' if more > 0 else ""
    return f'<div class="cards">{"".join(cards)}</div>{tail}' if cards else '<p class="muted">None found.</p>'


def render(result) -> str:
    """The page, as one string."""
    e = html.escape
    ranked = {k: sorted(result.of(k), key=lambda f: (-f.score, f.path)) for k in KINDS}
    image = [f for k in ("too-small", "odd-aspect-ratio", "blank") for f in ranked[k]]
    model = f"features of {e(result.model)}" if result.model else "pixels only (no model)"
    unreadable = "".join(f"<li>{e(f.path)}: {e(f.details)}</li>" for f in ranked["unreadable"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zoo audit: {e(result.data)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>{_STYLE}</style></head><body>
<h1>zoo audit: {e(result.data)}</h1>
<p>{result.images} images ({", ".join(f"{k} {v}" for k, v in result.splits.items() if v)}), {len(result.classes)}
{"labels (multi-label)" if result.multi_label else "classes"}; {model}; {result.seconds.get("total", 0):.1f} s.</p>
{_summary(result)}
<h2>Duplicate groups ({len(result.groups)})</h2>
<p class="muted">Leaking and conflicting groups first; the outlined image of each group is the one kept.</p>
{_groups(result)}
<h2>Suspected label errors ({len(ranked["label-error"])})</h2>
<p class="muted">Ranked by how little the out-of-fold probe believes the given label.</p>
{_findings(ranked["label-error"], SHOWN["label-error"], label_error=True)}
<h2>Outliers ({len(ranked["outlier"])})</h2>
{_findings(ranked["outlier"], SHOWN["outlier"])}
<h2>Image issues ({len(image)})</h2>
{_findings(image, SHOWN["image"])}
<h2>Unreadable files ({len(ranked["unreadable"])})</h2>
<ul>{unreadable}</ul>
</body></html>
"""
