"""Folder for nnU-Net's ``nnUNet_extTrainer``: nnU-Net imports each module here as a top-level module."""
