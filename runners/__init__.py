"""Task runners: assemble text encoder, image encoder, DIT and VAE for a task and run the sampling loop."""
