"""The HTML report of `zsad detect`: one self-contained `report.html` (inline CSS, relative links, no
script, no server) with a grid of thumbnails sorted by score, most anomalous first, each linking its
full-size panel (original | overlay | colour bar)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import torch
from PIL import Image

from .file_modes import write_text_atomic

REPORT_NAME = "report.html"
THUMBNAIL_SIDE = 224
PANEL_PNG_LEVEL = 1


@dataclass
class ReportItem:
    """One scored image: its source path, score, decision (or None) and panel (relative to the report)."""

    image: str
    score: float
    label: str | None
    panel: str


def save_thumbnail(panel: Image.Image, path: Path, side: int = THUMBNAIL_SIDE) -> None:
    """A small JPEG of `panel` (longest side `side`) for the report grid."""
    thumbnail = panel.convert("RGB")
    thumbnail.thumbnail((side * 2, side), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbnail.save(path, quality=85)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
p.meta { margin: 0 0 1rem; color: #555; font-size: .9rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: .8rem; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4rem; }
figure img { width: 100%; height: auto; display: block; border-radius: 3px; }
figcaption { font-size: .82rem; margin-top: .3rem; display: flex; justify-content: space-between; gap: .4rem; }
figcaption .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.anomalous { color: #fff; background: #c82020; border-radius: 3px; padding: 0 .3rem; }
.normal { color: #fff; background: #1e8240; border-radius: 3px; padding: 0 .3rem; }
"""


def _link(relative: str) -> str:
    return html.escape(quote(Path(relative).as_posix()), quote=True)


def write_html_report(
    out_dir: str | Path,
    items: Sequence[ReportItem],
    *,
    thumbnails: dict[str, str],
    title: str,
    details: Sequence[str] = (),
) -> Path:
    """Write `<out_dir>/report.html`; `thumbnails` maps each item's panel to its thumbnail (both relative
    to `out_dir`). Returns the report's path."""
    ranked = sorted(items, key=lambda item: item.score, reverse=True)
    anomalous = sum(item.label == "anomalous" for item in ranked)
    counts = f"{len(ranked)} images" + (f", {anomalous} anomalous" if any(i.label for i in ranked) else "")
    cards = []
    for rank, item in enumerate(ranked, start=1):
        name = html.escape(Path(item.image).name)
        badge = f'<span class="{item.label}">{item.label}</span>' if item.label else ""
        cards.append(
            f'<figure><a href="{_link(item.panel)}" title="{html.escape(item.image, quote=True)}">'
            f'<img src="{_link(thumbnails[item.panel])}" alt="{name}" loading="lazy"></a>'
            f'<figcaption><span class="name">{rank}. {name}</span><span>{item.score:.4f} {badge}</span></figcaption></figure>'
        )
    meta = " · ".join([counts, *details])
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)} · sorted by score, most anomalous first; "
        "click a thumbnail for the full panel</p>\n<div class=\"grid\">\n" + "\n".join(cards) + "\n</div></body></html>\n"
    )
    path = Path(out_dir) / REPORT_NAME
    write_text_atomic(path, page)
    return path


class DetectReport:
    """Panels, thumbnails and `report.html` for `zsad detect`.

    `add` writes an image's panel right away under the `absolute` and `image` map scales; under `run` it
    keeps the map (float16) and `finish` writes every panel with the range shared by all maps (the
    images are read again from disk then). `finish` writes the thumbnails and the report.
    """

    def __init__(self, out_dir: str | Path, *, map_scale: str = "absolute", title: str, details: Sequence[str] = ()) -> None:
        from .visualize import MAP_SCALES

        if map_scale not in MAP_SCALES:
            raise ValueError(f"map_scale must be one of {MAP_SCALES}; got {map_scale!r}")
        self.out_dir = Path(out_dir)
        self.map_scale = map_scale
        self.title = title
        self.details = [*details, f"map scale: {map_scale}"]
        self.items: list[ReportItem] = []
        self._deferred: list[tuple[ReportItem, torch.Tensor]] = []

    def add(self, image_path: str | Path, image: Image.Image, anomaly_map: torch.Tensor, score: float, label: str | None, panel: str) -> None:
        """Record one image; `panel` is the panel's file name relative to the output folder."""
        item = ReportItem(str(image_path), float(score), label, panel)
        self.items.append(item)
        if self.map_scale == "run":
            self._deferred.append((item, anomaly_map.detach().to("cpu", dtype=torch.float16)))
        else:
            self._write_panel(item, image, anomaly_map, self._range(anomaly_map))

    def add_finished(self, image_path: str | Path, score: float, label: str | None, panel: str) -> None:
        """Record an image whose panel an earlier, resumed run already wrote."""
        if self.map_scale == "run":
            raise ValueError("--map-scale run shares one colour range across the whole run, so it cannot resume; "
                             "rerun with --overwrite, or use --map-scale absolute or image")
        self.items.append(ReportItem(str(image_path), float(score), label, panel))

    def _range(self, anomaly_map) -> tuple[float, float]:
        from .visualize import map_value_ranges

        return map_value_ranges([anomaly_map], self.map_scale)[0]

    def _write_panel(self, item: ReportItem, image: Image.Image, anomaly_map, value_range: tuple[float, float]) -> None:
        from .visualize import anomaly_panel

        path = self.out_dir / item.panel
        path.parent.mkdir(parents=True, exist_ok=True)
        panel = anomaly_panel(image, anomaly_map, score=item.score, label=item.label, value_range=value_range,
                              title=Path(item.image).name)
        # zlib level 1: half the encoding time of the default level 6 for about 10 % larger files.
        panel.save(path, compress_level=PANEL_PNG_LEVEL)
        save_thumbnail(panel, self.out_dir / self.thumbnail_name(item))  # from memory, not read back

    @staticmethod
    def thumbnail_name(item: ReportItem) -> str:
        return (Path("thumbnails") / Path(item.panel).name).with_suffix(".jpg").as_posix()

    def finish(self) -> Path:
        """Write the deferred panels (`run` scale), the thumbnails and `report.html`; returns its path."""
        from .clip.processing import load_image, to_rgb
        from .visualize import map_value_ranges

        if self._deferred:
            ranges = map_value_ranges([m for _, m in self._deferred], "run")
            for (item, anomaly_map), value_range in zip(self._deferred, ranges):
                self._write_panel(item, to_rgb(load_image(item.image)), anomaly_map, value_range)
            self._deferred = []
        thumbnails = {}
        for item in self.items:
            thumbnail = thumbnails[item.panel] = self.thumbnail_name(item)
            if not (self.out_dir / thumbnail).is_file():  # a panel of a run that predates thumbnails-with-panels
                with Image.open(self.out_dir / item.panel) as panel:
                    save_thumbnail(panel, self.out_dir / thumbnail)
        return write_html_report(self.out_dir, self.items, thumbnails=thumbnails, title=self.title, details=self.details)
