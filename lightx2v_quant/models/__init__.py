"""Model implementations (Wan family) that load the official checkpoints."""
