"""The embedded default: a tiny CLIP pretrained by this project on a procedural world, and a synthetic
downstream suite, so the benchmark runs offline in minutes. See HEADROOM.md for what it is good for."""
