"""search/decide: choose a precision plan within the accuracy budget."""

from trimtab.search.decide import CandidateScore, choose, within_budget

__all__ = ["CandidateScore", "choose", "within_budget"]
