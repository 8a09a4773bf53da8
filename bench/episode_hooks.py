"""Per-sample cost of the service's analysed hook (pensu.episode_notes.EpisodeHooks) against the
inline feedback-review + namespace-observe it replaced, with and without episode notes to adopt.

    python bench/episode_hooks.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pensu.analyzer import MetricAnalyzer, Thresholds
from pensu.episode_notes import EpisodeHooks
from pensu.feedback import FeedbackFilter
from pensu.namespaces import NamespaceTracker
from tests.support import fast_config, series  # noqa: E402

N = 200_000
def old(feedback, namespaces, analysis):
    analysis = feedback.review(analysis)
    namespaces.observe(analysis)
    return analysis

analyzer = MetricAnalyzer("web.front.a", fast_config(Thresholds(quiet_samples=1000)))
data = [(ts, 500.0 if i == 200 else v) for i, (ts, v) in enumerate(series(203))]
hooks = EpisodeHooks(FeedbackFilter(), NamespaceTracker(2, 300), None)
results = [hooks.analysed(analyzer.process(ts, v), analyzer) for ts, v in data]
assert analyzer.decision.in_episode and analyzer.episode_notes is not None
last = results[-1]
for label, fn in [("old inline hook", lambda: old(hooks.feedback, hooks.namespaces, last)),
                  ("EpisodeHooks, episode open (notes adopted)", lambda: hooks.analysed(last, analyzer))]:
    t = time.perf_counter()
    for _ in range(N):
        fn()
    print(f"{label}: {(time.perf_counter() - t) / N * 1e6:.2f} us/sample")
analyzer.episode_notes = None
t = time.perf_counter()
for _ in range(N):
    hooks.analysed(last, analyzer)
print(f"EpisodeHooks, no notes: {(time.perf_counter() - t) / N * 1e6:.2f} us/sample")
t = time.perf_counter()
for ts, v in series(300, start=203):
    analyzer.process(ts, v)
print(f"for scale, one MetricAnalyzer.process (small preset): {(time.perf_counter() - t) / 300 * 1e6:.0f} us/sample")
