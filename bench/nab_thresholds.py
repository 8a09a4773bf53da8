import sys
sys.path.insert(0,'/work/main/bench')
from pathlib import Path
import numpy as np
from nab_scorer_lib import load_corpus, load_results, score_file, PROFILES, null_and_perfect
corpus = load_corpus(Path('/work/shared/nab/data'), Path('/work/shared/nab/combined_windows.json'))
res = load_results(Path(sys.argv[1]), corpus.keys())
p = PROFILES['standard']
null, perfect = null_and_perfect(corpus, p)
for t in [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1.0]:
    tot = tp = fp = 0
    for n, lab in corpus.items():
        c = score_file(lab, res[n], t, p); tot += c.raw_score; tp += c.tp; fp += c.fp
    print(f"t={t:<9} score={100*(tot-null)/(perfect-null):6.2f} tp={tp} fp={fp}")
