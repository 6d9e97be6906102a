"""search: the mixed-precision search and the decision within the accuracy budget."""

from trimtab.search.decide import CandidateScore, Decision, choose, decide, passes, within_budget

__all__ = ["CandidateScore", "Decision", "choose", "decide", "passes", "within_budget"]
