"""Model implementations (Wan family) that load the official checkpoints by their original key names."""
