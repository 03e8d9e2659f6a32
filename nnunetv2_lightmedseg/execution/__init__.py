"""How LightMedSeg runs fast: execution choices switched in beside the architecture."""
