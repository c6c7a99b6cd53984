"""The accuracy-against-axis figure: bars a reader can trust at any seed count, an axis accuracy can live on."""

from __future__ import annotations

import pytest

from fkt.report import figures


def run(arm: str, seed: int, labels: int | None, accuracy: float) -> dict:
    """A grid cell's metrics.json as the figures read it: a label budget axis, 3 classes."""
    labelled = 3 * labels if labels is not None else 300
    return {"dataset": "imagefolder", "arm": arm, "method": "functional", "seed": seed,
            "axes": {"data.labels_per_class": labels}, "images": {"labelled": labelled},
            "test": {"accuracy": accuracy}}


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Draw the figure for `runs` and return its axes (the figure is kept, not saved)."""
    kept = []
    monkeypatch.setattr(figures, "save", lambda fig, path: kept.append(fig))

    def draw(runs: list[dict]):
        figures.accuracy_vs_axis(runs, "data.labels_per_class", tmp_path / "fig.png", "title")
        return kept[-1].axes[0]

    return draw


def bars(ax) -> list[tuple[float, float]]:
    """(bottom, top) of every error bar drawn, in percent."""
    out = []
    for container in ax.containers:
        for segment in container.lines[2][0].get_segments():
            out.append((float(segment[0][1]), float(segment[1][1])))
    return out


def test_two_seeds_draw_their_min_max_range_inside_0_to_100(drawn):
    # two seeds 40 points apart: a 95% t-interval would run from about -190% to +320%
    runs = [run("functional", 0, 10, 0.30), run("functional", 1, 10, 0.70),
            run("functional", 0, None, 0.80), run("functional", 1, None, 0.90)]
    ax = drawn(runs)
    low, high = ax.get_ylim()
    assert 0 <= low and high <= 100
    assert sorted(bars(ax)) == [pytest.approx((30, 70)), pytest.approx((80, 90))]  # the seeds' range, no more
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["functional (bars: min-max of 2 seeds)"]
    assert "min-max" in ax.get_ylabel()


def test_three_seeds_keep_the_t_interval_and_the_axis_stays_inside_0_to_100(drawn):
    from scipy import stats

    accuracies = [0.10, 0.50, 0.95]
    ax = drawn([run("supervised-matched", s, 10, a) for s, a in enumerate(accuracies)])
    mean = 100 * sum(accuracies) / 3
    sd = 100 * stats.tstd(accuracies)
    half = stats.t.ppf(0.975, 2) * sd / 3 ** 0.5
    (bottom, top), = bars(ax)
    assert (bottom, top) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert bottom < 0 and top > 100  # the interval itself runs past both ends ...
    assert ax.get_ylim() == (0, 100)  # ... the axis does not
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["supervised-matched"]
    assert "min-max" not in ax.get_ylabel()


def test_a_line_with_mixed_seed_counts_says_where_bars_are_ranges(drawn):
    runs = [run("functional", s, 10, 0.5 + 0.01 * s) for s in range(3)] + [
        run("functional", 0, None, 0.8), run("functional", 1, None, 0.82),
        run("representational", 0, 10, 0.6)]
    ax = drawn(runs)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["functional (bars: min-max where under 3 seeds)", "representational (1 seed: no bars)"]
    low, high = ax.get_ylim()
    assert 0 <= low < 50 and 82 < high <= 100  # around the bars, not the whole 0-100
