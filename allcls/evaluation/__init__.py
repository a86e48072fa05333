"""Evaluating a run, an ensemble or a checkpoint: metrics with confidence intervals, calibration,
test-time augmentation, plots; the maps themselves come from allcls.inference.gradcam."""
