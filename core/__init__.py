"""The torch-free core every stage shares: errors, label specs, preprocessing, metrics,
atomic file writes and number checks. Depends on numpy and OpenCV only, so it ships to a
Jetson with runtime/ (docs/JETSON.md)."""
