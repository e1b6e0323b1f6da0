"""mudpt-bench: MuDPT, its ablations and prompt-tuning baselines on one frozen open_clip harness."""
__version__ = "0.1.0"
