"""Evaluating a run, an ensemble or a checkpoint: metrics with confidence intervals, calibration,
test-time augmentation, plots; Grad-CAM is in allcls.explain."""
