"""Reference values for shared/tests/stats.rs (scipy): Welch's t-test and the incomplete beta.

    /root/.cache/tpv/refenv/bin/python tests/reference/stats.py
"""
import json

import numpy as np
from scipy import special, stats

cases = {
    "three_origins": ([85.4, 85.3, 85.5], [83.0, 79.1, 86.9]),
    "unequal_sizes": ([0.91, 0.88, 0.95, 0.90], [0.71, 0.80]),
    "large_effect": ([75.6, 74.1, 77.0], [88.1, 88.3, 87.9]),
    "identical_means": ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]),
}
out = {}
for name, (a, b) in cases.items():
    r = stats.ttest_ind(a, b, equal_var=False)
    out[name] = dict(a=a, b=b, t=float(r.statistic), p=float(r.pvalue), df=float(r.df),
                     std0=float(np.std(a)), std1=float(np.std(a, ddof=1)))
out["betainc"] = [[a, b, x, float(special.betainc(a, b, x))]
                  for a, b, x in [(0.5, 0.5, 0.3), (2.0, 3.0, 0.4), (10.0, 0.5, 0.9), (1.5, 20.0, 0.05),
                                  (100.0, 0.5, 0.99)]]
print(json.dumps(out, indent=1))
