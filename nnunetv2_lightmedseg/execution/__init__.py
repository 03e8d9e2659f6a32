"""How LightMedSeg runs fast: execution choices switched in beside the architecture (CPU kernel choices, CUDA-graph
replay, GPU augmentation)"""
