"""segkd runtime: inference side (numpy + OpenCV; torch only inside the torch backend)."""
