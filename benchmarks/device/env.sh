# Environment for this repository on the device machine (its own python3 and torch; nnU-Net and the rest from
# the wheels that install.sh put into /opt/site). Source it from the repository root.
export PYTHONPATH=/opt/site:$PWD PATH=/opt/site/bin:$PATH PYTHONUNBUFFERED=1
# MKL corrupts memory in nnU-Net's blur augmentation there (see ../shared/design/nnunet-integration.md)
export MKL_ENABLE_INSTRUCTIONS=SSE4_2
