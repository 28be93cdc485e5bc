"""A provider's last 24 hours as an inline SVG of stacked bars (no JavaScript).

Three bands per hour, told apart by fill *and* pattern so the chart reads without colour:
applied (solid), trouble (failed for good: hatched), and acknowledged without a
job (duplicate, ignored, unusable: dotted outline). Each bar has a <title> with its counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from bridge.activity import Hour

BANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("applied", ("applied",)),
    ("trouble", ("failed",)),
    ("acknowledged", ("duplicate", "ignored", "unusable")),
)
WIDTH, HEIGHT, GAP = 480, 80, 2

_DEFS = (
    '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="4" height="4" class="trouble-bg"/>'
    '<line x1="0" y1="0" x2="0" y2="4" class="trouble-line"/></pattern></defs>'
)


def band_counts(hour: Hour, provider: str) -> dict[str, int]:
    """The hour's events of ``provider`` per band."""
    return {
        band: sum(hour.counts.get((provider, outcome), 0) for outcome in outcomes)
        for band, outcomes in BANDS
    }


def hours_svg(hours: Sequence[Hour], provider: str) -> Markup:
    """Stacked bars, oldest hour on the left."""
    stacks = [band_counts(hour, provider) for hour in hours]
    top = max((sum(s.values()) for s in stacks), default=0) or 1
    step = WIDTH / max(len(hours), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 14}" role="img" '
        f'aria-label="{escape(provider)}: events per hour, last {len(hours)} hours">',
        _DEFS,
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="axis"/>',
    ]
    for index, (hour, stack) in enumerate(zip(hours, stacks, strict=True)):
        x = index * step + GAP / 2
        y = float(HEIGHT)
        label = ", ".join(f"{n} {band}" for band, n in stack.items() if n) or "none"
        parts.append(f"<g><title>{hour.start:%H}:00 UTC: {escape(label)}</title>")
        for band, count in stack.items():
            if not count:
                continue
            height = HEIGHT * count / top
            y -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step - GAP:.1f}" '
                f'height="{height:.1f}" class="bar {band}"/>'
            )
        parts.append("</g>")
        if index % 6 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT + 12}" class="tick">{hour.start:%H}h</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
