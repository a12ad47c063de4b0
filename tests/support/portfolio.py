"""A site portfolio file offering only some trials: tests about one trial's cards use it, so that
the other packaged trials (and the card cap) do not decide which cards come back."""

from __future__ import annotations

from pathlib import Path


def portfolio_file(directory: Path, *trials: str, max_cards: int = 3) -> Path:
    path = directory / "portfolio.yaml"
    lines = [f"max_cards: {max_cards}", "trials:"] + [f"  - trial: {t}" for t in trials]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
