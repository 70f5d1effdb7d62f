"""The evaluation suite's metrics: is an erased organization really gone, and at what cost?

* :mod:`~fedunlearn.evaluate.scores` — per-record membership scores (loss, zlib, Min-K%, Min-K%++).
* :mod:`~fedunlearn.evaluate.mia` — ROC curve, AUC, TPR at low FPR, MUSE's PrivLeak.
* :mod:`~fedunlearn.evaluate.exposure` — canary exposure over the whole candidate space.
* :mod:`~fedunlearn.evaluate.memorization` — greedy continuations: exact match and ROUGE-L.
* :mod:`~fedunlearn.evaluate.utility` — perplexity on retained organizations and public text.
* :mod:`~fedunlearn.evaluate.fidelity` — next-token KL to retrained models and their spread.
* :mod:`~fedunlearn.evaluate.lower_bound` — empirical ε lower bounds; certificate checks.
* :mod:`~fedunlearn.evaluate.informative` — what a model learned of each organization (bits per
  byte against uniform and unigram baselines) and whether forgetting figures can mean anything.

Every function takes a model and its tokenizer (or plain scores) and returns a frozen dataclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedunlearn.lazy import lazy_package

#: Where each public name lives: imported on first use (scipy, transformers: seconds), see fedunlearn.lazy.
_WHERE = {
    "exposure": ("ExposureReport", "ExposureResult", "SecretRank", "candidate_losses", "candidate_tokens", "canary_exposure", "exposure_from_losses", "exposure_report"),
    "fidelity": ("FidelityResult", "KlDivergence", "RetrainSpread", "fidelity_to_retrain", "mean_next_token_kl", "retrain_spread"),
    "informative": ("LearnedReport", "OrganizationLearned", "ServedFigures", "Verdict", "chance_p95", "fit_unigram", "forgetting_verdict", "learned_report", "served_figures"),
    "lower_bound": ("CertificateCheck", "ClopperPearsonBound", "OneRunBound", "check_certificate", "clopper_pearson_upper", "epsilon_lower_bound", "epsilon_lower_bound_from_scores", "one_run_lower_bound", "one_run_lower_bound_from_scores", "one_run_p_value"),
    "memorization": ("MemorizationResult", "RougeL", "greedy_continuations", "lcs_length", "memorization", "rouge_l"),
    "mia": ("MiaResult", "RocCurve", "mia_results", "privleak", "roc_auc", "roc_curve", "tpr_at_fpr"),
    "scores": ("SCORE_NAMES", "SequenceScores", "TokenStatistics", "score_texts", "token_statistics", "zlib_entropy"),
    "utility": ("Perplexity", "UtilityReport", "perplexity", "utility_report"),
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fedunlearn.evaluate.exposure import (
        ExposureReport,
        ExposureResult,
        SecretRank,
        candidate_losses,
        candidate_tokens,
        canary_exposure,
        exposure_from_losses,
        exposure_report,
    )
    from fedunlearn.evaluate.fidelity import (
        FidelityResult,
        KlDivergence,
        RetrainSpread,
        fidelity_to_retrain,
        mean_next_token_kl,
        retrain_spread,
    )
    from fedunlearn.evaluate.informative import (
        LearnedReport,
        OrganizationLearned,
        ServedFigures,
        Verdict,
        chance_p95,
        fit_unigram,
        forgetting_verdict,
        learned_report,
        served_figures,
    )
    from fedunlearn.evaluate.lower_bound import (
        CertificateCheck,
        ClopperPearsonBound,
        OneRunBound,
        check_certificate,
        clopper_pearson_upper,
        epsilon_lower_bound,
        epsilon_lower_bound_from_scores,
        one_run_lower_bound,
        one_run_lower_bound_from_scores,
        one_run_p_value,
    )
    from fedunlearn.evaluate.memorization import (
        MemorizationResult,
        RougeL,
        greedy_continuations,
        lcs_length,
        memorization,
        rouge_l,
    )
    from fedunlearn.evaluate.mia import (
        MiaResult,
        RocCurve,
        mia_results,
        privleak,
        roc_auc,
        roc_curve,
        tpr_at_fpr,
    )
    from fedunlearn.evaluate.scores import (
        SCORE_NAMES,
        SequenceScores,
        TokenStatistics,
        score_texts,
        token_statistics,
        zlib_entropy,
    )
    from fedunlearn.evaluate.utility import Perplexity, UtilityReport, perplexity, utility_report

__all__ = [
    "CertificateCheck",
    "ClopperPearsonBound",
    "ExposureReport",
    "ExposureResult",
    "FidelityResult",
    "KlDivergence",
    "LearnedReport",
    "MemorizationResult",
    "MiaResult",
    "OneRunBound",
    "OrganizationLearned",
    "Perplexity",
    "RetrainSpread",
    "RocCurve",
    "RougeL",
    "SCORE_NAMES",
    "SecretRank",
    "SequenceScores",
    "ServedFigures",
    "TokenStatistics",
    "UtilityReport",
    "Verdict",
    "canary_exposure",
    "candidate_losses",
    "candidate_tokens",
    "chance_p95",
    "check_certificate",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "epsilon_lower_bound_from_scores",
    "exposure_from_losses",
    "exposure_report",
    "fidelity_to_retrain",
    "fit_unigram",
    "forgetting_verdict",
    "greedy_continuations",
    "lcs_length",
    "learned_report",
    "mean_next_token_kl",
    "memorization",
    "mia_results",
    "one_run_lower_bound",
    "one_run_lower_bound_from_scores",
    "one_run_p_value",
    "perplexity",
    "privleak",
    "retrain_spread",
    "roc_auc",
    "roc_curve",
    "score_texts",
    "served_figures",
    "token_statistics",
    "tpr_at_fpr",
    "utility_report",
    "zlib_entropy",
]

__getattr__, __dir__ = lazy_package(__name__, _WHERE, __all__)
