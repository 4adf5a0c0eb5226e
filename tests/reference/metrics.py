"""Reference values for shared/src/metrics.rs (pasted into shared/tests/metrics.rs).

    ~/.cache/tpv/refenv/bin/python tests/reference/metrics.py

scikit-learn 1.9.1, scipy 1.17.1; SQuAD v2 numbers by the official script's functions (copied below).
"""
import collections
import re
import string

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

# Generated strings: "maybe" is an invalid generation, labels compared after strip().lower().
refs = ["positive", "negative", "positive", "positive", "negative", "negative", "positive", "negative"]
preds = ["positive", "positive", "maybe", "positive", "negative", "Negative ", "negative", "negative"]
norm = lambda xs: [x.strip().lower() for x in xs]
# binary F1 of the positive class; the invalid generation makes sklearn call it multiclass, hence labels=
print("f1", f1_score(norm(refs), norm(preds), labels=["positive"], average="macro"))
print("mcc binary+invalid", matthews_corrcoef(norm(refs), norm(preds)))

refs3 = ["entailment", "neutral", "contradiction", "neutral", "entailment", "contradiction", "neutral"]
preds3 = ["entailment", "contradiction", "contradiction", "neutral", "neutral", "junk", "neutral"]
print("macro_f1", f1_score(refs3, preds3, average="macro", labels=["entailment", "neutral", "contradiction"],
                           zero_division=0))
print("mcc 3", matthews_corrcoef(refs3, preds3))

x = [3.2, 1.0, 4.4, 4.4, 0.2, 2.6, 5.0, 2.6]
y = [3.0, 1.4, 4.0, 3.8, 0.0, 3.0, 4.6, 2.0]
print("pearson", pearsonr(x, y).statistic)
print("spearman", spearmanr(x, y).statistic)


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(re.compile(r'\b(a|an|the)\b', re.UNICODE), ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


golds = [["Denver Broncos", "The Denver Broncos"], [], ["in the 10th century", "10th century"], ["Paris"]]
spreds = ["the Denver Broncos!", "", "10th and 11th centuries", "Lyon"]
em = [max(compute_exact(g, p) for g in (gs or [""])) for gs, p in zip(golds, spreds)]
f1 = [max(compute_f1(g, p) for g in (gs or [""])) for gs, p in zip(golds, spreds)]
print("squad em", sum(em) / len(em), "f1", sum(f1) / len(f1))
