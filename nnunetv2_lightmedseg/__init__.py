"""nnU-Net v2 extension for LightMedSeg."""
