"""Work for the lab: choosing samples to measure, and moving a calibration to another instrument."""
