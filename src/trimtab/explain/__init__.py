"""explain: where accuracy is lost and why: layer-wise diff (accumulated and local), sensitivity
ranking, risk lint, calibration diagnostics and a coverage check. Heavy modules load on use."""
