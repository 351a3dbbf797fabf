"""What `zoo rank` leaves in its folder: ranking.json, and ranking.png (the estimate against the cost per image,
with the Pareto front marked). Each file is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from zoo.core.atomic import atomic_write, write_json


def write_ranking(ranking, folder: Path) -> list[Path]:
    """ranking.json and ranking.png into `folder` (which exists); the paths written."""
    ranking.folder = folder
    written = [write_json(folder / "ranking.json", ranking.to_dict())]
    if any(r.ms_per_image is not None and ranking.estimate in r.scores for r in ranking.ranked):
        written.append(atomic_write(folder / "ranking.png", lambda tmp: plot(ranking, tmp)))
    return written


def plot(ranking, path: Path) -> None:
    """The ranking's estimate against ms/image (log scale), each candidate named, the Pareto front joined."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = ranking.estimate
    rows = [r for r in ranking.ranked if r.ms_per_image is not None and est in r.scores]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        others = [r for r in rows if not r.pareto]
        front = sorted((r for r in rows if r.pareto), key=lambda r: r.ms_per_image)
        ax.scatter([r.ms_per_image for r in others], [r.scores[est] for r in others], color="#8c8c8c", zorder=2,
                   label="candidate")  # fmt: skip
        ax.plot([r.ms_per_image for r in front], [r.scores[est] for r in front], "o-", color="#d62728", zorder=3,
                label="Pareto front (no candidate is both better and cheaper)")  # fmt: skip
        for r in rows:
            ax.annotate(r.candidate, (r.ms_per_image, r.scores[est]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.margins(x=0.2, y=0.1)  # room for the names of the candidates at the edges
        ax.set_xlabel("ms per image (batch 1, this machine)")
        ax.set_ylabel(f"{est} (higher transfers better)")
        ax.set_title(f"{len(rows)} candidates on {ranking.images} images of {Path(ranking.data).name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        with open(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
