"""Metrics, one vocabulary: names and which way is better (`names`), the vectorised numpy metrics
that every table of probabilities is scored with (`vectorised`), bootstrap intervals (`bootstrap`),
and the torchmetrics that training updates per batch and pools per epoch (`epoch`)."""
