"""The review page: one static HTML file (inline CSS, no script, relative image paths), so
it opens from disk with no server.

Every number on it is an element ``<span class="num" data-key="KEY" data-value="VALUE">``:
``VALUE`` is the exact figure (``repr`` of a float, an integer, or ``nan``), the element's
text its rounded form, so a test or a script can read the page's numbers back.
"""

from __future__ import annotations

import math
from html import escape

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left}
.charts img{margin:.3em;border:1px solid #eee;vertical-align:top}
.gallery{display:flex;flex-wrap:wrap;gap:.4em}
figure{margin:0;width:136px;font-size:.72em;border:1px solid #ddd;padding:3px;background:#fafafa}
figure img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#fff}
figcaption{overflow-wrap:anywhere}.key{color:#666}.bad{color:#b00}.none{color:#888;font-style:italic}
"""


def num(key: str, value, kind: str = "pct") -> str:
    """A number element (see the module's docstring); ``kind``: ``pct`` (a share shown in %),
    ``int``, or ``float``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f'<span class="num" data-key="{escape(key)}" data-value="nan">n/a</span>'
    text = f"{100 * value:.2f}%" if kind == "pct" else f"{int(value):,}" if kind == "int" else f"{value:.3f}"
    raw = str(int(value)) if kind == "int" else repr(float(value))
    return f'<span class="num" data-key="{escape(key)}" data-value="{raw}">{text}</span>'


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return (
        "<tr>" + "".join(f"<{tag}{' class=name' if i == 0 else ''}>{c}</{tag}>" for i, c in enumerate(cells)) + "</tr>"
    )


def summary_section(n: dict) -> str:
    rows = [
        ["training samples", num("samples", n["samples"], "int")],
        ["flagged (corrected ≠ given)", num("flagged", n["flagged"], "int")],
        ["flagged share", num("flagged_share", n["flagged_share"])],
        [
            "estimated share of the flags that are right (no true labels)",
            num("est_flag_precision", n["est_flag_precision"]),
        ],
        [
            "the lowest confidence cut whose flags are estimated ≥ 95% right, with 95% confidence "
            "(relabel.csv's by default)",
            num("budget_threshold", n["budget_threshold"], "float"),
        ],
        ["… flags at or above it", num("budget_flags", n["budget_flags"], "int")],
        ["… their estimated precision", num("budget_precision", n["budget_precision"])],
        [
            "… its 95% lower bound (from the lower of it and its out-of-sample check; the clean split's "
            "sampling error, all cuts at once)",
            num("budget_lower", n["budget_lower"]),
        ],
    ]
    if n["flagged"] and not n["budget_flags"]:
        rows.append(
            [
                "… none reaches it",
                '<span class="none">relabel.csv is empty: the review budget below gives every cut\'s '
                "estimate; pipeline/report.py --threshold writes a cut of your own</span>",
            ]
        )
    if n["known"]:
        rows += [
            ["samples whose true label is known", num("known", n["known"], "int")],
            ["true noise rate (known samples)", num("true_noise_rate", n["true_noise_rate"])],
            ["detection precision", num("detect_precision", n["detect_precision"])],
            ["detection recall", num("detect_recall", n["detect_recall"])],
            ["detection F1", num("detect_f1", n["detect_f1"])],
            ["given-label accuracy", num("label_acc_given", n["label_acc_given"])],
            ["corrected-label accuracy", num("label_acc_corrected", n["label_acc_corrected"])],
            ["… on samples given a right label", num("label_acc_corrected_clean", n["label_acc_corrected_clean"])],
            ["… on samples given a wrong label", num("label_acc_corrected_noisy", n["label_acc_corrected_noisy"])],
        ]
    else:
        rows.append(["true labels", '<span class="none">unknown: no detection or label accuracy</span>'])
    return '<h2 id="numbers">Numbers</h2><table class="numbers">' + "".join(_row(r) for r in rows) + "</table>"


def classes_section(n: dict, classes: list[str]) -> str:
    known = n["known"] > 0
    head = ["given class", "samples", "flagged", "estimated noise rate"] + (["true noise rate"] if known else [])
    rows = [_row(head, head=True)]
    for c in n["classes"]:
        k = c["class"]
        cells = [
            f'<a href="#class-{k}">{escape(classes[k])}</a>',
            num(f"class{k}_given", c["given"], "int"),
            num(f"class{k}_flagged", c["flagged"], "int"),
            num(f"class{k}_est_noise_rate", c["est_noise_rate"]),
        ]
        if known:
            cells.append(num(f"class{k}_true_noise_rate", c["true_noise_rate"]))
        rows.append(_row(cells))
    flips = "".join(
        _row([f"{escape(classes[g])} → {escape(classes[c])}", num(f"flip{g}_{c}", k, "int")])
        for g, c, k in n["top_flips"]
    )
    return (
        '<h2 id="classes">Per class</h2><p>Estimated noise rate: the share of the samples given a class that '
        'the corrector relabels.</p><table class="classes">' + "".join(rows) + "</table>"
        "<h3>Most frequent corrections (given → corrected)</h3>"
        + (f'<table class="flips">{flips}</table>' if flips else '<p class="none">none: nothing was flagged</p>')
    )


def figure(entry: dict, classes: list[str]) -> str:
    """One gallery tile: thumbnail, key, given → corrected, probability, α (and the true label where known)."""
    if entry.get("image"):
        img = f'<img src="{escape(entry["image"])}" alt="sample {entry["index"]}">'
    else:
        img = f'<div class="bad">{escape(entry.get("error", "no image"))}</div>'
    lines = [
        f'<span class="key">{escape(str(entry["key"]))}</span>',
        f"{escape(classes[entry['given']])} → <b>{escape(classes[entry['corrected']])}</b>",
        f"p {entry['prob']:.2f}, est. right {100 * entry.get('est_correct', entry['prob']):.0f}%, α "
        + ("n/a" if math.isnan(entry["alpha"]) else f"{entry['alpha']:.2f}"),
    ]
    if entry["true"] >= 0:
        lines.append(f"true: {escape(classes[entry['true']])}")
    return f'<figure data-index="{entry["index"]}">{img}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def gallery(entries: list[dict], classes: list[str], empty: str) -> str:
    if not entries:
        return f'<p class="none">{escape(empty)}</p>'
    return '<div class="gallery">' + "".join(figure(e, classes) for e in entries) + "</div>"


def render(info: dict, numbers: dict, classes: list[str], charts: list[tuple[str, str]], galleries: list[dict]) -> str:
    """The page. ``info``: ``title``, ``lines`` (text under it) and ``estimated_by`` (what the
    cards' est. right comes from, the table's ``est_correct_by``); ``charts``: ``(file, alt)``;
    ``galleries``: per class ``{"class", "errors", "doubtful"}`` with lists of entries for
    :func:`figure` (``index, key, given, corrected, prob, alpha, true, image or error``)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(info['title'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(info['title'])}</h1>",
    ]
    parts += [f"<p>{escape(line)}</p>" for line in info["lines"]]
    parts.append(summary_section(numbers))
    parts.append(
        '<h2 id="pictures">Pictures</h2><div class="charts">'
        + "".join(f'<img src="{escape(f)}" alt="{escape(a)}" title="{escape(a)}">' for f, a in charts)
        + "</div>"
    )
    parts.append(classes_section(numbers, classes))
    parts.append(
        '<h2 id="galleries">Samples to review, per given class</h2><p>Each card: key, given → '
        "corrected label; p: the corrected label's probability under ỹ; est. right: the estimated chance "
        f"that this label is the true one ({escape(info.get('estimated_by', 'soft label'))}; no true "
        "label is read); α: how much the corrector trusted the given label (0: not at all, 1: fully). A "
        "corrector sure of a correction sets α near 0, so the most confident flags read α 0.00.</p>"
    )
    for g in galleries:
        k = g["class"]
        parts.append(f'<h3 id="class-{k}">{escape(classes[k])}</h3>')
        parts.append("<p>Most confident suspected errors (corrected ≠ given):</p>")
        parts.append(gallery(g["errors"], classes, "none flagged"))
        parts.append("<p>Least confident of the samples kept as given (worth a second look):</p>")
        parts.append(gallery(g["doubtful"], classes, "none"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def read_page(html: str) -> tuple[dict[str, float], list[str]]:
    """A page's numbers (``data-key`` → float of ``data-value``) and the images it
    references (``src`` of every ``<img>``, in order)."""
    from html.parser import HTMLParser

    numbers: dict[str, float] = {}
    sources: list[str] = []

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                sources.append(a.get("src", ""))
            if "data-key" in a:
                numbers[a["data-key"]] = float(a["data-value"])

    Reader().feed(html)
    return numbers, sources
