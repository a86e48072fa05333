"""Images in, decisions out, with neither MLflow nor Lightning: each member's preprocessing, the
test-time augmentation views, the combining rule, calibration, prediction sets and referral,
Grad-CAM. Evaluation, ensembles, packaging, batch prediction and the page all use it."""
