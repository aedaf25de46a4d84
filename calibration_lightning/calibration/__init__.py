"""Pure tensor code: confidence, calibration metrics, targets, temperature, regime diagnosis."""
